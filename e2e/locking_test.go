package e2e

import (
	"net/http"
	"strings"
	"testing"

	. "github.com/runatlantis/atlantis/testing"
)

// TestAutoplanLocksAcrossReplicas: the autoplan of a new pull request locks
// the project in Redis, both replicas list that lock, and a second pull
// request on the same project, whose webhook lands on the other replica, is
// told who holds it and does not get it.
func TestAutoplanLocksAcrossReplicas(t *testing.T) {
	h := newHarness(t, harnessOptions{})

	pr1 := h.openPR(1)
	m1, _ := h.opened(h.r1, pr1)
	plan := h.waitComment(pr1, m1, "the autoplan", isPlanResult)
	Assert(t, isPlanned(plan.Body), "autoplan of #1 did not plan:\n%s", plan.Body)
	Assert(t, strings.Contains(plan.Body, "terraform_data.pr1"), "autoplan of #1 does not show its change:\n%s", plan.Body)
	st := h.waitDone(pr1, m1, "atlantis/plan")
	Equals(t, "success", st.State)

	// The lock is in Redis under upstream's key, with upstream's JSON.
	Equals(t, 1, h.lockHolder())
	Assert(t, h.exists(pullIndexKey(1)), "pull index %s missing", pullIndexKey(1))
	// Both replicas list it: the lock lives in Redis, not in one replica.
	for _, r := range h.fleet.Replicas {
		Equals(t, map[string]int{lockName: 1}, h.apiLocks(r))
	}

	// The second pull request's webhook lands on the other replica.
	pr2 := h.openPR(2)
	m2, _ := h.opened(h.r2, pr2)
	refused := h.waitComment(pr2, m2, "the lock refusal", isPlanResult)
	Assert(t, lockedBy(refused.Body, 1), "#2 was not told that #1 holds the lock:\n%s", refused.Body)
	st = h.waitDone(pr2, m2, "atlantis/plan")
	Equals(t, "failure", st.State)
	for _, c := range h.botComments(pr2, m2) {
		Assert(t, !isPlanned(c.Body), "#2 planned although #1 holds the lock:\n%s", c.Body)
	}

	Equals(t, 1, h.lockHolder())
	for _, r := range h.fleet.Replicas {
		Equals(t, map[string]int{lockName: 1}, h.apiLocks(r))
	}
	h.checkRedisConsistent()
}

// TestUnlockApplyMergeAndApplyLock: `atlantis unlock` releases the lock, an
// apply on the other replica than the one that planned applies, the global
// apply lock set on one replica blocks applies on the other until it is
// deleted, and merging the pull request releases the lock.
func TestUnlockApplyMergeAndApplyLock(t *testing.T) {
	h := newHarness(t, harnessOptions{})

	pr := h.openPR(1)
	m, _ := h.opened(h.r1, pr)
	h.waitComment(pr, m, "the autoplan", isPlanned)
	h.waitDone(pr, m, "atlantis/plan")
	Equals(t, 1, h.lockHolder())

	// `atlantis unlock` on the replica that did not plan releases the lock.
	h.unlock(h.r2, pr)
	for _, r := range h.fleet.Replicas {
		Equals(t, map[string]int{}, h.apiLocks(r))
	}
	h.checkRedisConsistent()

	// Plan again on replica 1; it takes the lock again.
	plan := h.plan(h.r1, pr)
	Assert(t, isPlanned(plan.Body), "re-plan failed:\n%s", plan.Body)
	Equals(t, 1, h.lockHolder())

	// The global apply lock, set on replica 1, blocks applies on replica 2.
	h.api(h.r1, http.MethodPost, "/apply/lock", http.StatusOK)
	Assert(t, h.exists(applyLockKey), "%s not in Redis after POST /apply/lock", applyLockKey)
	m, _ = h.comment(h.r2, pr, "atlantis apply")
	blocked := h.waitResponse(pr, m, "the apply refusal")
	Assert(t, isApplyDisabled(blocked.Body), "apply under the global apply lock was not refused:\n%s", blocked.Body)
	Equals(t, 1, h.lockHolder())

	h.api(h.r1, http.MethodDelete, "/apply/unlock", http.StatusOK)
	Assert(t, !h.exists(applyLockKey), "%s still in Redis after DELETE /apply/unlock", applyLockKey)

	// Now replica 2 applies the plan replica 1 made (shared data dir).
	m, _ = h.comment(h.r2, pr, "atlantis apply")
	applied := h.waitComment(pr, m, "the apply", func(body string) bool { return strings.Contains(body, "Ran Apply for") })
	Assert(t, isApplied(applied.Body), "apply on replica 2 failed:\n%s", applied.Body)
	st := h.waitDone(pr, m, "atlantis/apply")
	Equals(t, "success", st.State)
	// Upstream keeps the lock after apply, until the pull is merged.
	Equals(t, 1, h.lockHolder())

	// Merging releases it, and the pull's lock index goes with it.
	h.closed(h.r1, pr)
	h.waitNoLock()
	h.eventually("the lock index of #1 to be removed", func() (bool, string) {
		left := h.exists(pullIndexKey(1)) || h.exists(pullClosingKey(1))
		return !left, "still there"
	})
	h.eventually("the lock to leave every replica's list", func() (bool, string) {
		l1, l2 := h.apiLocks(h.r1), h.apiLocks(h.r2)
		return len(l1) == 0 && len(l2) == 0, strings.Join(append(sortedKeys(l1), sortedKeys(l2)...), ",")
	})
	h.checkRedisConsistent()
}
