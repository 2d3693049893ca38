package load

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// grant is a pull told it holds a lock: by a TryLock that acquired it, or by
// the comment of a hand-over. It took effect no earlier than lo, and the pull
// knew from from.
type grant struct {
	pullKey
	lo, from int64
}

// grants lists every grant: TryLocks that acquired, and the comments of
// hand-overs (the worker read the pull as the holder just before it).
func (h *history) grants() []grant {
	var gs []grant
	for _, r := range h.ops {
		if (r.Kind == kindPlan || r.Kind == kindReplan) && r.Acquired {
			gs = append(gs, grant{pullKey{r.Pull, r.Key}, r.Start, r.End})
		}
	}
	for _, n := range h.notices {
		if n.claim.NoticeKind != string(enhanced.NoticeTransferred) {
			continue
		}
		lo, _ := h.handedAt(n.claim.AtMs)
		for _, at := range n.comments {
			gs = append(gs, grant{pullKey{n.claim.Pull, n.claim.Key}, lo, at})
		}
	}
	return gs
}

// until is when a grant certainly still held: the start of the first release
// that may have ended it after it took effect. A pull's grant ends with its
// own release of the lock, its close, or an Unlock of the lock that released
// it (or failed, so may have).
func (h *history) until(g grant) int64 {
	end := int64(forever)
	for _, spans := range [][]span{h.ends[g.pullKey], h.keyEnds[g.key], h.pullEnds[g.pull]} {
		for _, s := range spans {
			if s.End > g.lo {
				end = min(end, s.Start)
			}
		}
	}
	return end
}

type held struct {
	pull     int
	from, to int64
}

// checkGrants: no two pulls hold one lock over overlapping intervals, each
// running from a grant to the first release that may have ended it.
func (h *history) checkGrants() {
	byKey := map[string][]held{}
	for _, g := range h.grants() {
		if to := h.until(g); to > g.from {
			byKey[g.key] = append(byKey[g.key], held{g.pull, g.from, to})
			h.v.Grants++
		}
	}
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, key := range keys {
		intervals := mergeByPull(byKey[key])
		var active []held
		for _, cur := range intervals {
			active = slices.DeleteFunc(active, func(a held) bool { return a.to <= cur.from })
			for _, a := range active {
				h.v.DoubleGrants++
				h.problem("double grant: lock %s held by pull %d over %s and by pull %d over %s",
					key, a.pull, h.interval(a.from, a.to), cur.pull, h.interval(cur.from, cur.to))
			}
			active = append(active, cur)
		}
	}
}

// mergeByPull joins each pull's overlapping intervals (a pull that plans
// again while it holds the lock), sorted by start.
func mergeByPull(hs []held) []held {
	slices.SortFunc(hs, func(a, b held) int {
		return cmp.Or(cmp.Compare(a.pull, b.pull), cmp.Compare(a.from, b.from))
	})
	var out []held
	for _, x := range hs {
		if n := len(out); n > 0 && out[n-1].pull == x.pull && x.from <= out[n-1].to {
			out[n-1].to = max(out[n-1].to, x.to)
			continue
		}
		out = append(out, x)
	}
	slices.SortFunc(out, func(a, b held) int { return cmp.Compare(a.from, b.from) })
	return out
}

func (h *history) interval(from, to int64) string {
	base := h.base()
	if to == forever {
		return fmt.Sprintf("[%s, end)", time.Duration(from-base))
	}
	return fmt.Sprintf("[%s, %s)", time.Duration(from-base), time.Duration(to-base))
}

// base is the first instant of the history, for readable times.
func (h *history) base() int64 {
	base := int64(forever)
	for _, r := range h.in.Records {
		if r.Kind != kindClock {
			base = min(base, r.Start)
		}
	}
	return base
}
