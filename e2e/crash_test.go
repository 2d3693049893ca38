package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/e2e/e2ekit"
	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
	"github.com/atlantis-enhanced/atlantis/testdrive"
)

// stallingPlanConfig is a server-side repo config whose plan workflow first
// runs a step that stalls while the file stall exists (see e2ekit.Workflow).
func stallingPlanConfig(t *testing.T, stall string) string {
	t.Helper()
	cfg, err := e2ekit.Workflow{Stall: stall}.RepoConfig()
	Ok(t, err)
	return cfg
}

// TestReplicaKilledMidPlan: the replica planning a pull request dies with
// SIGKILL. The pull keeps its lock, as upstream would (or has none, if the
// kill came before it was taken), Redis holds nothing orphaned, and the
// surviving replica plans and unlocks that pull.
//
// First the kill comes once the lock is in Redis (the stalling step runs
// after the lock is taken, so the plan is certainly in progress); then a
// third replica is killed as soon as its plan's pending status shows, which
// may be before or after it locks.
func TestReplicaKilledMidPlan(t *testing.T) {
	stall := filepath.Join(t.TempDir(), "stall-plans")
	h := newHarness(t, harnessOptions{extraArgs: []string{"--repo-config-json=" + stallingPlanConfig(t, stall)}})

	pr1 := h.openPR(1)
	h.killMidPlan(h.r1, pr1, stall, true)
	h.surviveKill(pr1)

	r3, err := h.fleet.StartReplica(h.ctx, "replica-3")
	Ok(t, err)
	pr2 := h.openPR(2)
	h.killMidPlan(r3, pr2, stall, false)
	h.surviveKill(pr2)
}

// killMidPlan sends pr's "opened" webhook to victim, whose plan stalls, and
// kills victim with SIGKILL once the lock is in Redis (afterLock) or once
// the plan's pending status or the lock shows. It checks what Redis holds
// afterwards.
func (h *harness) killMidPlan(victim *testdrive.Replica, pr *vcssim.PullRequest, stall string, afterLock bool) {
	t := h.t
	t.Helper()
	Ok(t, os.WriteFile(stall, nil, 0o600))
	m, _ := h.opened(victim, pr)
	var sawLock bool
	h.eventually("the autoplan of #"+strconv.Itoa(pr.Number)+" to start on "+victim.Name(), func() (bool, string) {
		n, err := h.holder(lockKey)
		sawLock = err == nil && n == pr.Number
		if sawLock || afterLock {
			return sawLock, fmt.Sprintf("lock holder #%d, err %v", n, err)
		}
		for _, st := range h.sim.Statuses(repoFull, pr.HeadSHA) {
			if st.Context == "atlantis/plan" && st.State == "pending" && !st.CreatedAt.Before(m.time) {
				return true, ""
			}
		}
		return false, "no pending plan status, no lock"
	})
	victim.Kill()
	Ok(t, os.Remove(stall))
	t.Logf("killed %s mid-plan of #%d (lock seen before the kill: %v)", victim.Name(), pr.Number, sawLock)

	// A command the victim wrote just before dying may still be in Redis's
	// input buffer; let it settle before reading the outcome.
	time.Sleep(250 * time.Millisecond)
	switch holder := h.lockHolder(); holder {
	case pr.Number:
		t.Logf("#%d keeps its lock after its replica died, as with upstream", pr.Number)
		Equals(t, map[string]int{lockName: pr.Number}, h.apiLocks(h.r2))
	case 0:
		Assert(t, !sawLock, "the lock of #%d vanished when its replica died", pr.Number)
		t.Logf("the kill came before #%d locked: it holds no lock", pr.Number)
		Equals(t, map[string]int{}, h.apiLocks(h.r2))
	default:
		t.Fatalf("#%d holds the lock, but only #%d asked for it", holder, pr.Number)
	}
	for _, c := range h.botComments(pr, m) {
		Assert(t, !isPlanResult(c.Body), "the plan of #%d finished before the kill:\n%s", pr.Number, c.Body)
	}
	h.checkRedisConsistent()
}

// surviveKill has the surviving replica 2 plan pr, then unlock it.
func (h *harness) surviveKill(pr *vcssim.PullRequest) {
	t := h.t
	t.Helper()
	plan := h.plan(h.r2, pr)
	Assert(t, isPlanned(plan.Body), "plan of #%d on the surviving replica failed:\n%s", pr.Number, plan.Body)
	Equals(t, pr.Number, h.lockHolder())
	Equals(t, map[string]int{lockName: pr.Number}, h.apiLocks(h.r2))
	h.checkRedisConsistent()

	h.unlock(h.r2, pr)
	Equals(t, map[string]int{}, h.apiLocks(h.r2))
	h.checkRedisConsistent()
}
