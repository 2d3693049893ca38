package e2e

import (
	"fmt"
	"strings"
	"testing"

	. "github.com/runatlantis/atlantis/testing"
)

// TestStaleLockReaperReleasesAClosedPullsLock: a pull request is closed on
// GitHub and its webhook never reaches Atlantis. The stale-lock reaper asks
// GitHub about the pulls holding locks, finds it closed and releases its
// lock; another pull plans the project afterwards.
func TestStaleLockReaperReleasesAClosedPullsLock(t *testing.T) {
	h := newHarness(t, harnessOptions{extraArgs: []string{
		"--enhanced-locking-stale-lock-reaper",
		"--enhanced-locking-stale-lock-reaper-interval=1s",
		"--enhanced-locking-stale-lock-reaper-calls-per-minute=600",
	}})
	lost := h.openPR(1)
	open := h.openPR(2)
	Assert(t, isPlanned(h.plan(h.r1, lost).Body), "the first plan failed")
	Assert(t, isLockedOut(h.plan(h.r2, open).Body), "#2 should find the project locked by #1")
	// The reaper leaves an open pull request's lock alone.
	Equals(t, lost.Number, h.lockHolder())

	Ok(t, h.sim.ClosePullRequest(lost))
	h.eventually("the reaper to release the closed pull's lock", func() (bool, string) {
		holder := h.lockHolder()
		return holder == 0, fmt.Sprintf("#%d holds the lock", holder)
	})
	released := fmt.Sprintf("stale-lock reaper: %s#%d is closed; released 1 lock(s)", repoFull, lost.Number)
	Assert(t, strings.Contains(h.r1.Output()+h.r2.Output(), released), "no replica logged %q", released)
	Equals(t, map[string]int{}, h.apiLocks(h.r1))
	h.checkRedisConsistent()

	Assert(t, isPlanned(h.plan(h.r2, open).Body), "#2 could not plan after the reaper freed the lock")
	Equals(t, open.Number, h.lockHolder())
}
