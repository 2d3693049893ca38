package e2e

import (
	"strings"
	"testing"

	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
)

// secondDir is the second Terraform project of the multi-project tests.
const secondDir = "dns"

// TestQueuedOnTwoProjects: #2 changes two projects, locked by #1 and #3.
// Its plan queues it on both, with one position comment naming both; when
// #1 and #3 are merged, one right after the other, #2 is handed both locks
// and re-planned for each project.
func TestQueuedOnTwoProjects(t *testing.T) {
	h := newQueueHarness(t, harnessOptions{extraProjects: []string{secondDir}})
	prA := h.openPROn(1, "change-1", projectDir)
	prB := h.openPROn(2, "change-2", projectDir, secondDir)
	prC := h.openPROn(3, "change-3", secondDir)

	for _, holder := range []struct {
		pr  *vcssim.PullRequest
		dir string
	}{{prA, projectDir}, {prC, secondDir}} {
		plan := h.plan(h.r1, holder.pr)
		Assert(t, isPlanned(plan.Body) && strings.Contains(plan.Body, "dir: `"+holder.dir+"`"), "plan of #%d failed:\n%s", holder.pr.Number, plan.Body)
	}

	queued := h.mark(prB)
	h.comment(h.r2, prB, "atlantis plan")
	refused := h.waitComment(prB, queued, "the lock refusals", isPlanResult)
	Assert(t, strings.Contains(refused.Body, "locked by an unapplied plan from pull #1") && strings.Contains(refused.Body, "locked by an unapplied plan from pull #3"),
		"#2 was not told that #1 and #3 hold its projects:\n%s", refused.Body)
	h.waitDone(prB, queued, "atlantis/plan")
	h.eventually("#2 to show one position comment naming both projects", func() (bool, string) {
		visible := h.visiblePositions(prB)
		if len(visible) != 1 {
			return false, strings.Join(bodies(visible), "\n---\n")
		}
		body := visible[0].Body
		return strings.Contains(body, "waits for 2 locked projects") &&
			showsPosition(body, projectDir, 1, 1, 1) && showsPosition(body, secondDir, 1, 1, 3), body
	})
	Equals(t, 1, h.count(prB, queued, isPositionComment))
	h.waitQueue(projectDir, 1, 2)
	h.waitQueue(secondDir, 3, 2)

	// A push whose webhook Atlantis never sees: both re-plans must fetch it,
	// whichever replica runs each.
	pushed, err := h.sim.UpdatePullRequest(prB, mergeFiles(
		vcssim.InDir(projectDir, vcssim.TerraformProject("pr2pushed")),
		vcssim.InDir(secondDir, vcssim.TerraformProject("pr2pushed"))))
	Ok(t, err)

	handOver := h.mark(prB)
	h.closed(h.r1, prA)
	h.closed(h.r2, prC)
	for _, dir := range []string{projectDir, secondDir} {
		h.waitComment(prB, handOver, "the hand-over of "+dir, func(body string) bool {
			return isHandedOver(body) && strings.Contains(body, "`"+dir+"`")
		})
		plan := h.waitComment(prB, handOver, "the re-plan of "+dir, func(body string) bool {
			return isPlanResult(body) && strings.Contains(body, "dir: `"+dir+"`")
		})
		Assert(t, isPlanned(plan.Body) && strings.Contains(plan.Body, "terraform_data.pr2pushed"), "the re-plan of %s failed:\n%s", dir, plan.Body)
	}
	h.waitNoticesDelivered()
	h.waitQueue(projectDir, 2)
	h.waitQueue(secondDir, 2)
	h.waitNoPosition(prB)
	h.eventually("#2's plans of both projects to be recorded as done", func() (bool, string) {
		var pending []string
		for _, dir := range []string{projectDir, secondDir} {
			if !h.planSucceeded(pushed, handOver, dir) {
				pending = append(pending, dir)
			}
		}
		return len(pending) == 0, strings.Join(pending, ", ")
	})
	Equals(t, 2, h.count(prB, handOver, isHandedOver))
	Equals(t, 2, h.count(prB, handOver, isPlanResult))
	h.checkRedisConsistent()
}
