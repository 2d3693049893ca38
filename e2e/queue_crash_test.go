package e2e

import (
	"fmt"
	"testing"

	. "github.com/runatlantis/atlantis/testing"
)

// noticeLease is the replicas' --enhanced-locking-queue-notice-lease: how
// long the survivor waits for the dead replica's claim of a notice to end.
const noticeLease = "3s"

// TestHandOverSurvivesTheReplicaThatMadeIt: replica 1 merges #1, which hands
// the lock to the queued #2 and writes the notice, claims the notice, and is
// killed with SIGKILL while its hand-over comment is on its way to GitHub
// (the GitHub stand-in holds it, so GitHub never gets it). Replica 2, paused
// until then so that replica 1 was the one to claim, takes the notice over
// once the lease ends: #2 gets one hand-over comment and one plan.
func TestHandOverSurvivesTheReplicaThatMadeIt(t *testing.T) {
	h := newQueueHarness(t, harnessOptions{extraArgs: []string{"--enhanced-locking-queue-notice-lease=" + noticeLease}})
	victim, survivor := h.r1, h.r2
	prA, prB := h.openPR(1), h.openPR(2)

	plan := h.plan(victim, prA)
	Assert(t, isPlanned(plan.Body), "plan of #1 failed:\n%s", plan.Body)
	h.queuePlan(survivor, prB, 1)
	h.waitPosition(prB, projectDir, 1, 1, 1)

	hold := h.sim.HoldComments(isHandedOver)
	Ok(t, survivor.Pause())
	handOver := h.mark(prB)
	h.closed(victim, prA)
	select {
	case <-hold.Arrived():
	case <-h.ctx.Done():
		t.Fatalf("%s did not start commenting the hand-over: %s", victim.Name(), h.ctx.Err())
	}
	// The hand-over is in Redis, its notice claimed and not delivered.
	Equals(t, 2, h.lockHolder())
	Assert(t, h.exists(outboxKey), "no notice in %s while its comment is held", outboxKey)

	victim.Kill()
	h.eventually("the dead replica's comment to be dropped", func() (bool, string) {
		return hold.Dropped() == 1, fmt.Sprintf("%d dropped", hold.Dropped())
	})
	hold.Release()
	Equals(t, 0, h.count(prB, handOver, isHandedOver))
	Ok(t, survivor.Resume())

	h.waitHandedOverAndReplanned(prB, handOver)
	h.waitNoticesDelivered()
	h.waitQueue(projectDir, 2)
	h.waitNoPosition(prB)
	Equals(t, 2, h.lockHolder())
	Equals(t, 1, h.count(prB, handOver, isHandedOver))
	Equals(t, 1, h.count(prB, handOver, isPlanResult))
	h.checkRedisConsistent()
}
