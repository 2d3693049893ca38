package load

import (
	"slices"
	"time"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

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
