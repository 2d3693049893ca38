package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
	"github.com/atlantis-enhanced/atlantis/testdrive"
)

// appDir is the second Terraform project of the deadlock tests' repo.
const appDir = "app"

// The detector's comments, as server/core/locking/enhanced/deadlock/comments.go
// words them.

func isDeadlockNotice(body string) bool { return strings.HasPrefix(body, "**Lock queue deadlock**") }
func isDeadlockResolved(body string) bool {
	return strings.HasPrefix(body, "**Lock queue deadlock resolved**")
}

// newDeadlockHarness is the queue harness with a second project and deadlock
// detection on, checking every second besides when a pull queues.
func newDeadlockHarness(t *testing.T, resolution string) *harness {
	t.Helper()
	return newQueueHarness(t, harnessOptions{
		extraProjects: []string{appDir},
		extraArgs: []string{"--enhanced-locking-deadlock-detection", "--enhanced-locking-deadlock-resolution=" + resolution,
			"--enhanced-locking-deadlock-check-interval=1s"},
	})
}

// planDir comments `atlantis plan -d dir` on pr through r and waits until
// the plan finished, returning Atlantis's answer.
func (h *harness) planDir(r *testdrive.Replica, pr *vcssim.PullRequest, dir string) vcssim.Comment {
	h.t.Helper()
	m, _ := h.comment(r, pr, "atlantis plan -d "+dir)
	c := h.waitComment(pr, m, "the plan of "+dir, isPlanResult)
	h.waitDone(pr, m, "atlantis/plan")
	return c
}

// deadlock makes #1 and #2, each changing both projects, plan them in
// opposite orders on the two replicas: #1 holds network and queues for
// app, #2 holds app and queues for network, last.
func (h *harness) deadlock() (pr1, pr2 *vcssim.PullRequest) {
	h.t.Helper()
	pr1, pr2 = h.openPROn(1, "change-1", projectDir, appDir), h.openPROn(2, "change-2", projectDir, appDir)
	for _, step := range []struct {
		r      *testdrive.Replica
		pr     *vcssim.PullRequest
		dir    string
		holder int
	}{{h.r1, pr1, projectDir, 0}, {h.r2, pr2, appDir, 0}, {h.r1, pr1, appDir, 2}, {h.r2, pr2, projectDir, 1}} {
		answer := h.planDir(step.r, step.pr, step.dir)
		if step.holder == 0 {
			Assert(h.t, isPlanned(answer.Body), "plan of %s on #%d failed:\n%s", step.dir, step.pr.Number, answer.Body)
		} else {
			Assert(h.t, lockedBy(answer.Body, step.holder), "#%d was not told that #%d holds %s:\n%s", step.pr.Number, step.holder, step.dir, answer.Body)
		}
	}
	return pr1, pr2
}

// TestDeadlockNotify: #1 and #2 deadlock across the two replicas. Each is
// told once, by one replica, who waits for whom and what to do, and nothing
// is freed. Checks that follow (every second, and the one #1 queueing again
// triggers) see the same deadlock and tell nobody again. `atlantis unlock`
// on #2, as the comment suggests, ends it: #1 is handed app.
func TestDeadlockNotify(t *testing.T) {
	h := newDeadlockHarness(t, "notify")
	pr1, pr2 := h.deadlock()

	for _, pr := range []*vcssim.PullRequest{pr1, pr2} {
		c := h.waitComment(pr, mark{}, "the deadlock notice", isDeadlockNotice)
		for _, want := range []string{"`" + projectDir + "` (workspace `default`)", "`" + appDir + "` (workspace `default`)",
			"/pull/1)", "/pull/2)", "`atlantis unlock`"} {
			Assert(t, strings.Contains(c.Body, want), "the deadlock notice on #%d does not name %s:\n%s", pr.Number, want, c.Body)
		}
	}
	h.waitQueue(projectDir, 1, 2)
	h.waitQueue(appDir, 2, 1)

	// #1 plans app again: it keeps its place, and its queueing triggers a
	// check on replica 2. Then a few interval checks on both replicas.
	refused := h.planDir(h.r2, pr1, appDir)
	Assert(t, lockedBy(refused.Body, 2), "#1 was not told that #2 holds %s:\n%s", appDir, refused.Body)
	time.Sleep(3 * time.Second)
	for _, pr := range []*vcssim.PullRequest{pr1, pr2} {
		Equals(t, 1, h.count(pr, mark{}, isDeadlockNotice))
	}
	h.waitQueue(projectDir, 1, 2)
	h.waitQueue(appDir, 2, 1)

	handOver, unlocked := h.mark(pr1), h.mark(pr2)
	h.comment(h.r1, pr2, "atlantis unlock")
	h.waitComment(pr2, unlocked, "the unlock confirmation", isUnlocked)
	h.waitComment(pr1, handOver, "the hand-over of "+appDir, isHandedOver)
	h.waitQueue(appDir, 1)
	h.waitQueue(projectDir, 1)
	h.waitNoticesDelivered()
	h.checkRedisConsistent()
}

// TestDeadlockReleaseVictim: #1 and #2 deadlock across the two replicas; #2
// queued last, so it gives way: it leaves network's queue and its lock of
// app passes to #1, which is handed it and re-planned. Both are told why,
// once. #1 then holds both projects and applies them.
func TestDeadlockReleaseVictim(t *testing.T) {
	h := newDeadlockHarness(t, "release-victim")
	pr1, pr2 := h.deadlock()

	for _, pr := range []*vcssim.PullRequest{pr1, pr2} {
		c := h.waitComment(pr, mark{}, "the deadlock resolution", isDeadlockResolved)
		Assert(t, strings.Contains(c.Body, "`"+appDir+"` (workspace `default`), as `atlantis unlock` does"),
			"the resolution on #%d does not name the lock freed:\n%s", pr.Number, c.Body)
	}
	notice := h.waitComment(pr1, mark{}, "the hand-over of "+appDir, isHandedOver)
	Assert(t, strings.Contains(notice.Body, "`"+appDir+"`"), "the hand-over notice does not name %s:\n%s", appDir, notice.Body)
	h.waitComment(pr1, mark{}, "the re-plan of "+appDir, func(body string) bool { return planOf(appDir)(body) })
	h.waitQueue(projectDir, 1)
	h.waitQueue(appDir, 1)
	h.waitNoticesDelivered()
	Equals(t, map[string]int{lockName: 1, repoFull + "/" + appDir + "/default/": 1}, h.apiLocks(h.r2))
	for _, pr := range []*vcssim.PullRequest{pr1, pr2} {
		Equals(t, 1, h.count(pr, mark{}, isDeadlockResolved))
		Equals(t, 0, h.count(pr, mark{}, isDeadlockNotice))
	}
	victim := h.botComments(pr2, mark{})
	Assert(t, strings.Contains(lastMatching(victim, isDeadlockResolved), "Comment `atlantis plan` to plan again"),
		"the victim is not told what to do next")

	m, _ := h.comment(h.r2, pr1, "atlantis apply")
	applied := h.waitComment(pr1, m, "the apply", func(body string) bool { return strings.Contains(body, "Ran Apply for") })
	Assert(t, isApplied(applied.Body) && strings.Contains(applied.Body, fmt.Sprintf("dir: `%s`", appDir)),
		"#1 did not apply both projects:\n%s", applied.Body)
	h.waitDone(pr1, m, "atlantis/apply")
	h.checkRedisConsistent()
}

func lastMatching(comments []vcssim.Comment, match func(string) bool) string {
	for i := len(comments) - 1; i >= 0; i-- {
		if match(comments[i].Body) {
			return comments[i].Body
		}
	}
	return ""
}
