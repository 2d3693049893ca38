package load

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// The checker claims a violation only when the timestamps make it certain:
// every event is placed by the interval of the call that saw it, on one
// monotonic clock, and Redis's own times (a hand-over's, an entry's arrival)
// are compared with each other, or placed on that clock within the offsets
// the processes measured.

// checkInput is a run's history and what the run saw after it.
type checkInput struct {
	Records   []record
	AgingStep time.Duration
	// Queued are the entries still in a queue when the run ended, by ID.
	Queued map[string]bool
	// Undelivered counts the notices left in the outbox when the run ended.
	Undelivered int
}

// verdict is what the checker found.
type verdict struct {
	Ops, Handovers int
	// Grants counts the grant intervals compared; Waiting the entries
	// certainly queued at a hand-over, whose rank was compared.
	Grants, Waiting    int
	DoubleGrants       int
	OrderViolations    int
	LostHandovers      int
	DuplicateHandovers int
	Anomalies          int
	// Errors counts the lock operations that failed.
	Errors int
	// Problems describes the violations, one line each.
	Problems []string
	// Acquire is how long each plan that got its lock took; Handover is from
	// each hand-over in Redis to its comment, Claimed to its first claim.
	Acquire, Handover, Claimed []time.Duration
}

func (v verdict) violations() int {
	return v.DoubleGrants + v.OrderViolations + v.LostHandovers + v.DuplicateHandovers + v.Anomalies
}

const forever = math.MaxInt64

// span is a call's interval; End is forever when its effect may come later.
type span struct{ Start, End int64 }

func callSpan(r record) span {
	if r.Unknown {
		return span{r.Start, forever}
	}
	return span{r.Start, r.End}
}

type pullKey struct {
	pull int
	key  string
}

// grant is a pull told it holds a lock: by a TryLock that acquired it, or by
// the comment of a hand-over. It took effect no earlier than lo, and the pull
// knew from from.
type grant struct {
	pullKey
	lo, from int64
}

// notice is a hand-over or expiry as its claims and deliveries showed it.
type notice struct {
	claim    record // the first claim
	claimEnd int64  // the first claim's end
	comments []int64
	acks     []int64
	replans  int
}

// history indexes a run's records for the checks.
type history struct {
	in      checkInput
	offLo   int64 // wall - monotonic, lowest and highest measured
	offHi   int64
	clocked bool

	ops      []record             // lock operations
	byPK     map[pullKey][]record // lock operations by pull and lock
	ends     map[pullKey][]span   // releases that end the pull's grants on the lock
	keyEnds  map[string][]span    // releases of unknown outcome that may end any grant on the lock
	pullEnds map[int][]span       // closes, which end every grant of the pull
	closes   map[int][]record     // closes by pull
	entries  map[string]record    // queue entries by ID, as first seen
	byKey    map[string][]record  // queue entries by lock
	left     map[string]record    // entries that left their queue by their pull's close
	notices  map[string]*notice   // notices by ID
	byEntry  map[string][]string  // notice IDs by entry ID
	replans  map[pullKey]int      // re-plans the Planner was asked for
	v        verdict
}

func newHistory(in checkInput) *history {
	h := &history{
		in:       in,
		byPK:     map[pullKey][]record{},
		ends:     map[pullKey][]span{},
		keyEnds:  map[string][]span{},
		pullEnds: map[int][]span{},
		closes:   map[int][]record{},
		entries:  map[string]record{},
		byKey:    map[string][]record{},
		left:     map[string]record{},
		notices:  map[string]*notice{},
		byEntry:  map[string][]string{},
		replans:  map[pullKey]int{},
		offLo:    math.MaxInt64,
		offHi:    math.MinInt64,
	}
	for _, r := range in.Records {
		h.add(r)
	}
	return h
}

func (h *history) add(r record) {
	pk := pullKey{r.Pull, r.Key}
	switch r.Kind {
	case kindPlan, kindReplan:
		h.ops = append(h.ops, r)
		h.byPK[pk] = append(h.byPK[pk], r)
	case kindUnlockOwned:
		h.ops = append(h.ops, r)
		h.ends[pk] = append(h.ends[pk], callSpan(r))
	case kindUnlock:
		h.ops = append(h.ops, r)
		switch {
		case r.Err != "":
			h.keyEnds[r.Key] = append(h.keyEnds[r.Key], callSpan(r))
		case r.Holder != 0:
			h.ends[pullKey{r.Holder, r.Key}] = append(h.ends[pullKey{r.Holder, r.Key}], callSpan(r))
		}
	case kindClose:
		h.ops = append(h.ops, r)
		h.pullEnds[r.Pull] = append(h.pullEnds[r.Pull], callSpan(r))
		h.closes[r.Pull] = append(h.closes[r.Pull], r)
	case kindQueued:
		if _, seen := h.entries[r.Entry]; !seen {
			h.entries[r.Entry] = r
			h.byKey[r.Key] = append(h.byKey[r.Key], r)
		}
	case kindLeft:
		h.left[r.Entry] = r
	case kindClaim:
		n := h.notice(r.Notice)
		if n.claimEnd == 0 {
			n.claim, n.claimEnd = r, r.End
			h.byEntry[r.Entry] = append(h.byEntry[r.Entry], r.Notice)
		}
		n.claimEnd = min(n.claimEnd, r.End)
	case kindCommented:
		h.notice(r.Notice).comments = append(h.notice(r.Notice).comments, r.Start)
	case kindAck:
		if r.Err == "" {
			h.notice(r.Notice).acks = append(h.notice(r.Notice).acks, r.Start)
		}
	case kindMark:
		if r.Err == "" && r.Step == string(enhanced.StepReplanned) {
			h.notice(r.Notice).replans++
		}
	case kindReplanned:
		h.replans[pk]++
	case kindClock:
		h.clocked = true
		h.offLo = min(h.offLo, r.Wall-r.End)
		h.offHi = max(h.offHi, r.Wall-r.Start)
	case kindAnomaly:
		h.v.Anomalies++
		h.problem("recorder anomaly in process %d: %s", r.Proc, r.Err)
	}
}

func (h *history) notice(id string) *notice {
	n := h.notices[id]
	if n == nil {
		n = &notice{}
		h.notices[id] = n
	}
	return n
}

const maxProblems = 20

func (h *history) problem(format string, args ...any) {
	if len(h.v.Problems) < maxProblems {
		h.v.Problems = append(h.v.Problems, fmt.Sprintf(format, args...))
	}
}

// check runs every check on a history.
func check(in checkInput) verdict {
	h := newHistory(in)
	for _, r := range h.ops {
		if r.Kind != kindReplan {
			h.v.Ops++
		}
		if r.Err != "" {
			h.v.Errors++
			h.problem("%s by pull %d on lock %s failed: %s", r.Kind, r.Pull, r.Key, r.Err)
		}
		if r.Kind == kindPlan && r.Acquired {
			h.v.Acquire = append(h.v.Acquire, time.Duration(r.End-r.Start))
		}
	}
	h.checkGrants()
	h.checkOrder()
	h.checkDeliveries()
	return h.v
}

// handedAt bounds, on the monotonic clock, the instant of a hand-over Redis
// timed at atMs (its wall clock, truncated to the ms): from lo to hi. Without
// clock samples nothing is known.
func (h *history) handedAt(atMs int64) (lo, hi int64) {
	if !h.clocked {
		return math.MinInt64, forever
	}
	return atMs*int64(time.Millisecond) - h.offHi, (atMs+1)*int64(time.Millisecond) - h.offLo
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

// checkOrder: a lock is handed to the best entry, by priority then arrival
// (Priority.Headstart), among those in its queue at the release. It is
// violated for sure when an entry that arrived before the hand-over (by
// Redis's clock), ranks ahead of the one handed the lock whatever the
// sub-millisecond arrival times, had not expired, and was still queued
// after the hand-over.
func (h *history) checkOrder() {
	for id, n := range h.notices {
		if n.claim.NoticeKind != string(enhanced.NoticeTransferred) {
			continue
		}
		h.v.Handovers++
		winner := n.claim
		for _, e := range h.byKey[winner.Key] {
			if e.Entry == winner.Entry || e.Pull == winner.Pull {
				continue
			}
			if e.EnqueuedMs+1 > winner.AtMs || e.ExpiresMs <= winner.AtMs+1 || !h.stillQueuedAfter(e, n) {
				continue
			}
			h.v.Waiting++
			if h.ranksAhead(e, winner) {
				h.v.OrderViolations++
				h.problem("queue order: lock %s was handed to pull %d (%s, entered %d ms) by notice %s while pull %d (%s, entered %d ms) waited",
					winner.Key, winner.Pull, enhanced.Priority(winner.Priority), winner.EnqueuedMs, id, e.Pull, enhanced.Priority(e.Priority), e.EnqueuedMs)
				break
			}
		}
	}
}

// ranksAhead says whether a certainly sorts before b. Arrival is Redis's
// clock in µs, sampled in the enqueue script at most a ms after the
// EnqueuedMs it also records.
func (h *history) ranksAhead(a, b record) bool {
	sortKey := func(r record, latest int64) int64 {
		return r.EnqueuedMs*1000 + latest - enhanced.Priority(r.Priority).Headstart(h.in.AgingStep).Microseconds()
	}
	return sortKey(a, 2000) < sortKey(b, 0)
}

// stillQueuedAfter says whether entry e was certainly in its queue at some
// instant after notice n's hand-over: handed over or expired later by
// Redis's clock, still queued at the end, or removed by a close of its pull
// that started after n was claimed. An entry's ID is never reused, so it was
// queued all along since it arrived.
func (h *history) stillQueuedAfter(e record, n *notice) bool {
	for _, other := range h.byEntry[e.Entry] {
		if h.notices[other].claim.AtMs > n.claim.AtMs {
			return true
		}
	}
	if h.in.Queued[e.Entry] {
		return true
	}
	if l, ok := h.left[e.Entry]; ok {
		if c, ok := h.closeOf(l); ok && c.Start >= n.claimEnd {
			return true
		}
	}
	return false
}

// closeOf finds the close that made entry l leave: the earliest-starting
// close of its pull in its process around the instant the adapter reported it.
func (h *history) closeOf(l record) (record, bool) {
	var found record
	ok := false
	for _, c := range h.closes[l.Pull] {
		if c.Proc == l.Proc && c.Start <= l.Start && l.Start <= c.End && (!ok || c.Start < found.Start) {
			found, ok = c, true
		}
	}
	return found, ok
}

// checkDeliveries: every hand-over notice is delivered, its comment posted
// once and its re-plan run once; a pull held a lock only after a grant it
// was told of.
func (h *history) checkDeliveries() {
	if h.in.Undelivered > 0 {
		h.v.LostHandovers += h.in.Undelivered
		h.problem("%d notice(s) still in the outbox after the drain", h.in.Undelivered)
	}
	replanned := map[pullKey]int{}
	for id, n := range h.notices {
		c := n.claim
		pk := pullKey{c.Pull, c.Key}
		if len(n.comments) > 1 {
			h.v.DuplicateHandovers += len(n.comments) - 1
			h.problem("notice %s (pull %d, lock %s) commented %d times", id, c.Pull, c.Key, len(n.comments))
		}
		if n.replans > 1 {
			h.v.DuplicateHandovers += n.replans - 1
			h.problem("notice %s (pull %d, lock %s) marked re-planned %d times", id, c.Pull, c.Key, n.replans)
		}
		if c.NoticeKind != string(enhanced.NoticeTransferred) {
			continue
		}
		if n.replans > 0 {
			replanned[pk]++
		}
		if len(n.comments) > 0 && h.clocked {
			lo, hi := h.handedAt(c.AtMs)
			h.v.Handover = append(h.v.Handover, time.Duration(n.comments[0]-(lo+hi)/2))
			h.v.Claimed = append(h.v.Claimed, time.Duration(n.claimEnd-(lo+hi)/2))
		}
		switch {
		case len(n.acks) == 0:
			// Left in the outbox: counted in Undelivered.
		case n.replans > 0 || h.letGo(n):
			// Delivered, or the worker had nothing more to deliver.
		case len(n.comments) > 0:
			h.v.LostHandovers++
			h.problem("notice %s (pull %d, lock %s) commented, then acknowledged without a re-plan while the pull neither released nor asked for the lock", id, c.Pull, c.Key)
		default:
			h.v.LostHandovers++
			h.problem("notice %s (pull %d, lock %s) acknowledged untold while the pull neither released nor asked for the lock", id, c.Pull, c.Key)
		}
	}
	for pk, marked := range replanned {
		switch calls := h.replans[pk]; {
		case calls > marked:
			h.v.DuplicateHandovers += calls - marked
			h.problem("pull %d re-planned lock %s %d times for %d hand-over(s)", pk.pull, pk.key, calls, marked)
		case calls < marked:
			h.v.LostHandovers += marked - calls
			h.problem("pull %d re-planned lock %s %d times for %d hand-over(s) marked re-planned", pk.pull, pk.key, calls, marked)
		}
	}
	for pk, calls := range h.replans {
		if replanned[pk] == 0 {
			h.v.DuplicateHandovers += calls
			h.problem("pull %d re-planned lock %s %d times with no hand-over marked re-planned", pk.pull, pk.key, calls)
		}
	}
	h.checkHoldingsExplained()
}

// letGo says whether the pull handed the lock by n may have stopped holding
// it, or taken it by a request of its own, between the hand-over and the
// acknowledgement that told it nothing: the worker's reasons to stay silent.
func (h *history) letGo(n *notice) bool {
	c := n.claim
	lo, _ := h.handedAt(c.AtMs)
	acked := slices.Max(n.acks)
	overlaps := func(s span) bool { return s.End > lo && s.Start < acked }
	pk := pullKey{c.Pull, c.Key}
	for _, spans := range [][]span{h.ends[pk], h.keyEnds[c.Key], h.pullEnds[c.Pull]} {
		if slices.ContainsFunc(spans, overlaps) {
			return true
		}
	}
	return slices.ContainsFunc(h.byPK[pk], func(r record) bool { return overlaps(callSpan(r)) })
}

// checkHoldingsExplained: each time a release reports a pull's lock, the
// pull held it from a grant: a TryLock of its own (acquired, or failed and
// so maybe acquired) or a hand-over, whose notice Redis writes in the same
// step. More releases than those means a hand-over left no notice.
func (h *history) checkHoldingsExplained() {
	released := map[pullKey]int{}
	for _, r := range h.ops {
		switch r.Kind {
		case kindUnlockOwned, kindUnlock:
			if r.Holder != 0 {
				released[pullKey{r.Holder, r.Key}]++
			}
		case kindClose:
			for _, k := range r.Keys {
				released[pullKey{r.Pull, k}]++
			}
		}
	}
	granted := map[pullKey]int{}
	for pk, ops := range h.byPK {
		for _, r := range ops {
			if r.Acquired || r.Err != "" {
				granted[pk]++
			}
		}
	}
	for _, n := range h.notices {
		if n.claim.NoticeKind == string(enhanced.NoticeTransferred) {
			granted[pullKey{n.claim.Pull, n.claim.Key}]++
		}
	}
	for pk, count := range released {
		if count > granted[pk] {
			h.v.LostHandovers += count - granted[pk]
			h.problem("pull %d released lock %s %d times after %d grant(s): handed over without a notice", pk.pull, pk.key, count, granted[pk])
		}
	}
}
