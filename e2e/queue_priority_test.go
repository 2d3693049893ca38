package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
)

// hotfixRules makes pulls from hotfix/ branches critical: every pull of the
// test plans the same project, so only the head branch tells them apart.
const hotfixRules = `rules:
  - head_branch: "hotfix/**"
    priority: critical
`

// TestCriticalPullGoesAheadInTheQueue: #2 (normal) queues behind #1's lock,
// then #3, from a hotfix branch and critical by the rules file, queues after
// it and goes ahead of it; #2 is told it moved back. When #1 is merged the
// lock goes to #3; when #3 is closed, to #2. Each is handed the lock and
// re-planned once.
func TestCriticalPullGoesAheadInTheQueue(t *testing.T) {
	rules := filepath.Join(t.TempDir(), "priority-rules.yaml")
	Ok(t, os.WriteFile(rules, []byte(hotfixRules), 0o600))
	h := newQueueHarness(t, harnessOptions{extraArgs: []string{"--enhanced-locking-priority-rules=" + rules}})
	holder, normal, critical := h.openPR(1), h.openPR(2), h.openPROn(3, "hotfix/urgent-3", projectDir)

	plan := h.plan(h.r1, holder)
	Assert(t, isPlanned(plan.Body), "plan of #1 failed:\n%s", plan.Body)
	h.queuePlan(h.r2, normal, 1)
	h.waitPosition(normal, projectDir, 1, 1, 1)
	h.queuePlan(h.r1, critical, 1)
	shown := h.waitPosition(critical, projectDir, 1, 2, 1)
	row, _ := positionRow(shown.Body, projectDir)
	Assert(t, strings.Contains(row, "| critical |"), "#3's position comment does not show its priority:\n%s", shown.Body)
	h.waitPosition(normal, projectDir, 2, 2, 1)
	h.waitQueue(projectDir, 1, 3, 2)
	priorities := map[int]string{}
	for _, e := range h.queues(h.r2)[projectDir].Queue {
		priorities[e.PullNumber] = e.Priority
	}
	Equals(t, map[int]string{3: "critical", 2: "normal"}, priorities)

	first := h.mark(critical)
	h.closed(h.r2, holder)
	h.waitHandedOverAndReplanned(critical, first)
	h.waitQueue(projectDir, 3, 2)
	h.waitPosition(normal, projectDir, 1, 1, 3)
	Equals(t, 0, h.count(normal, first, isHandedOver))

	second := h.mark(normal)
	d, err := h.sim.SendPullRequestClosed(events(h.r1), critical, false)
	h.checkDelivered("closing #3 unmerged", d, err)
	h.waitHandedOverAndReplanned(normal, second)
	h.waitQueue(projectDir, 2)
	h.waitNoPosition(normal)
	h.waitNoticesDelivered()
	Equals(t, 1, h.count(critical, first, isHandedOver))
	Equals(t, 1, h.count(critical, first, isPlanResult))
	Equals(t, 1, h.count(normal, second, isHandedOver))
	Equals(t, 1, h.count(normal, second, isPlanResult))
	h.checkRedisConsistent()
}

// waitHandedOverAndReplanned waits for pr's hand-over notice and re-plan
// after m, and for the plan to be recorded as a success.
func (h *harness) waitHandedOverAndReplanned(pr *vcssim.PullRequest, m mark) {
	h.t.Helper()
	h.waitComment(pr, m, "the hand-over notice", isHandedOver)
	plan := h.waitComment(pr, m, "the re-plan", isPlanResult)
	Assert(h.t, isPlanned(plan.Body), "the re-plan of #%d failed:\n%s", pr.Number, plan.Body)
	Equals(h.t, "success", h.waitDone(pr, m, "atlantis/plan").State)
}
