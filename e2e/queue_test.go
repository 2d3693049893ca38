package e2e

import (
	"strings"
	"testing"

	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
	"github.com/atlantis-enhanced/atlantis/testdrive"
)

// TestQueuedPullIsHandedTheLockAndReplanned: #2 plans on replica 2 a project
// #1 holds from its plan on replica 1. #2 is told who holds the lock, as
// upstream tells it, and gets one position comment saying what happens next.
// Its author pushes again meanwhile. #1 is applied and merged; #2 is handed
// the lock and re-planned on its new head commit with nobody commenting:
// one hand-over comment, one plan.
func TestQueuedPullIsHandedTheLockAndReplanned(t *testing.T) {
	h := newQueueHarness(t, harnessOptions{})
	prA, prB := h.openPR(1), h.openPR(2)

	plan := h.plan(h.r1, prA)
	Assert(t, isPlanned(plan.Body), "plan of #1 failed:\n%s", plan.Body)
	Equals(t, 1, h.lockHolder())

	queued := h.mark(prB)
	h.comment(h.r2, prB, "atlantis plan")
	refused := h.waitComment(prB, queued, "the lock refusal", isPlanResult)
	Assert(t, lockedBy(refused.Body, 1), "#2 was not told that #1 holds the lock:\n%s", refused.Body)
	Equals(t, "failure", h.waitDone(prB, queued, "atlantis/plan").State)
	position := h.waitPosition(prB, projectDir, 1, 1, 1)
	Assert(t, strings.Contains(position.Body, "re-plans it, on its current head commit, with nobody commenting"),
		"the position comment does not say what happens next:\n%s", position.Body)
	Equals(t, 1, h.count(prB, queued, isPositionComment))
	h.waitQueue(projectDir, 1, 2)
	Equals(t, 1, h.lockHolder())

	// A push whose webhook Atlantis never sees: only a re-plan that reads
	// the pull's head from GitHub plans it.
	pushed, err := h.sim.UpdatePullRequest(prB, vcssim.InDir(projectDir, vcssim.TerraformProject("pr2pushed")))
	Ok(t, err)

	m, _ := h.comment(h.r1, prA, "atlantis apply")
	applied := h.waitComment(prA, m, "the apply", func(body string) bool { return strings.Contains(body, "Ran Apply for") })
	Assert(t, isApplied(applied.Body), "apply of #1 failed:\n%s", applied.Body)
	h.waitDone(prA, m, "atlantis/apply")

	handOver := h.mark(prB)
	h.closed(h.r2, prA)
	notice := h.waitComment(prB, handOver, "the hand-over notice", isHandedOver)
	Assert(t, strings.Contains(notice.Body, "`"+projectDir+"`"), "the hand-over notice does not name the project:\n%s", notice.Body)
	replan := h.waitComment(prB, handOver, "the re-plan", isPlanResult)
	Assert(t, isPlanned(replan.Body), "the re-plan of #2 failed:\n%s", replan.Body)
	Assert(t, strings.Contains(replan.Body, "terraform_data.pr2pushed"), "#2 was not re-planned on its head commit:\n%s", replan.Body)
	Equals(t, "success", h.waitDone(pushed, handOver, "atlantis/plan").State)
	h.waitNoticesDelivered()
	h.waitNoPosition(prB)
	h.waitQueue(projectDir, 2)
	Equals(t, 2, h.lockHolder())
	h.checkRedisConsistent()

	// What more comes on #2 comes from its own commands: the notice and the
	// re-plan stay single.
	h.unlock(h.r1, prB)
	Equals(t, 1, h.count(prB, handOver, isHandedOver))
	Equals(t, 1, h.count(prB, handOver, isPlanResult))
	Equals(t, 0, h.count(prB, handOver, isPositionComment))
	for _, c := range h.sim.Comments(repoFull, prB.Number) {
		Assert(t, c.ID <= handOver.commentID || c.Author == h.sim.User() || c.Body == "atlantis unlock",
			"someone but Atlantis commented on #2 after the hand-over: %q", c.Body)
	}
	h.checkRedisConsistent()
}

// TestQueuePositionsFollowTheHead: #2, #3 and #4 queue in that order behind
// #1. When #1 is merged and #2 handed the lock, #3 and #4 each see their new
// place, in one comment that replaces the last; when #3, first in line now,
// leaves with `atlantis unlock`, #4 sees that it is first, and #3 sees no
// place any more.
func TestQueuePositionsFollowTheHead(t *testing.T) {
	h := newQueueHarness(t, harnessOptions{})
	prs := []*vcssim.PullRequest{h.openPR(1), h.openPR(2), h.openPR(3), h.openPR(4)}
	holder, waiting := prs[0], prs[1:]

	plan := h.plan(h.r1, holder)
	Assert(t, isPlanned(plan.Body), "plan of #1 failed:\n%s", plan.Body)
	for i, pr := range waiting {
		h.queuePlan(h.fleet.Replicas[i%2], pr, 1)
		h.waitPosition(pr, projectDir, i+1, i+1, 1)
	}
	h.waitQueue(projectDir, 1, 2, 3, 4)

	h.closed(h.r2, holder)
	h.waitComment(prs[1], mark{}, "the hand-over notice", isHandedOver)
	h.waitQueue(projectDir, 2, 3, 4)
	h.waitPosition(prs[2], projectDir, 1, 2, 2)
	h.waitPosition(prs[3], projectDir, 2, 2, 2)
	h.waitNoPosition(prs[1])

	m, _ := h.comment(h.r1, prs[2], "atlantis unlock")
	h.waitComment(prs[2], m, "the unlock confirmation", isUnlocked)
	h.waitQueue(projectDir, 2, 4)
	h.waitPosition(prs[3], projectDir, 1, 1, 2)
	h.waitNoPosition(prs[2])
	h.waitNoticesDelivered()
	h.checkRedisConsistent()
}

// queuePlan comments `atlantis plan` on pr through r, which finds the
// project locked by holder, and waits until the plan finished.
func (h *harness) queuePlan(r *testdrive.Replica, pr *vcssim.PullRequest, holder int) {
	h.t.Helper()
	m, _ := h.comment(r, pr, "atlantis plan")
	refused := h.waitComment(pr, m, "the lock refusal", isPlanResult)
	Assert(h.t, lockedBy(refused.Body, holder), "#%d was not told that #%d holds the lock:\n%s", pr.Number, holder, refused.Body)
	h.waitDone(pr, m, "atlantis/plan")
}
