package e2e

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"

	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/e2e/e2ekit"
	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
	"github.com/atlantis-enhanced/atlantis/testdrive"
)

// queueArgs turn on the priority queue and its re-plans on every replica.
var queueArgs = []string{"--enhanced-locking-priority-queue", "--enhanced-locking-auto-plan"}

// newQueueHarness is newHarness with the priority queue on: a plan refused
// because another pull holds the project waits in the project's queue, and
// the pull handed the lock is re-planned.
func newQueueHarness(t *testing.T, opts harnessOptions) *harness {
	t.Helper()
	opts.extraArgs = append(append([]string(nil), queueArgs...), opts.extraArgs...)
	return newHarness(t, opts)
}

// The queue's comments, as server/core/locking/enhanced/queue/notifier.go
// words them.

var (
	isPositionComment = e2ekit.IsQueuePosition
	isHandedOver      = e2ekit.IsHandedOver
)

// positionRow is the row of a position comment for the project in dir:
// "| `dir` (workspace `default`) | 1 of 2 | #1 | normal | ... |".
func positionRow(body, dir string) (string, bool) {
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, fmt.Sprintf("| `%s` (workspace `default`) |", dir)) {
			return line, true
		}
	}
	return "", false
}

// showsPosition says whether a position comment tells that the pull is at
// position of depth in dir's queue, behind holder.
func showsPosition(body, dir string, position, depth, holder int) bool {
	row, ok := positionRow(body, dir)
	return ok && isPositionComment(body) &&
		strings.Contains(row, fmt.Sprintf("| %d of %d |", position, depth)) &&
		strings.Contains(row, fmt.Sprintf("/pull/%d)", holder))
}

// planOf is the plan comment of the project in dir, on any pull.
func planOf(dir string) func(string) bool {
	return func(body string) bool {
		return isPlanned(body) && strings.Contains(body, "dir: `"+dir+"`")
	}
}

// visiblePositions are pr's position comments that are not hidden: what the
// pull's author sees of its places.
func (h *harness) visiblePositions(pr *vcssim.PullRequest) []vcssim.Comment {
	var out []vcssim.Comment
	for _, c := range h.botComments(pr, mark{}) {
		if isPositionComment(c.Body) && !c.Minimized {
			out = append(out, c)
		}
	}
	return out
}

// waitPosition waits until pr shows exactly one position comment, telling
// it waits at position of depth in dir's queue behind holder.
func (h *harness) waitPosition(pr *vcssim.PullRequest, dir string, position, depth, holder int) vcssim.Comment {
	h.t.Helper()
	var shown vcssim.Comment
	h.eventually(fmt.Sprintf("#%d to show position %d of %d in %s's queue behind #%d", pr.Number, position, depth, dir, holder), func() (bool, string) {
		visible := h.visiblePositions(pr)
		if len(visible) != 1 {
			return false, fmt.Sprintf("%d visible position comments: %v", len(visible), bodies(visible))
		}
		shown = visible[0]
		return showsPosition(shown.Body, dir, position, depth, holder), shown.Body
	})
	return shown
}

// waitNoPosition waits until pr shows no position comment.
func (h *harness) waitNoPosition(pr *vcssim.PullRequest) {
	h.t.Helper()
	h.eventually(fmt.Sprintf("#%d's position comment to be hidden", pr.Number), func() (bool, string) {
		visible := h.visiblePositions(pr)
		return len(visible) == 0, fmt.Sprint(bodies(visible))
	})
}

func bodies(comments []vcssim.Comment) []string {
	out := make([]string, len(comments))
	for i, c := range comments {
		out[i] = c.Body
	}
	return out
}

// count is how many of Atlantis's comments on pr after m satisfy match.
func (h *harness) count(pr *vcssim.PullRequest, m mark, match func(string) bool) int {
	n := 0
	for _, c := range h.botComments(pr, m) {
		if match(c.Body) {
			n++
		}
	}
	return n
}

// queueStatus is what GET /api/locks/queue-status reports of one lock.
type queueStatus struct {
	Key    string
	Path   string
	Holder *struct {
		PullNumber int `json:"pull_number"`
	}
	Queue []struct {
		Position   int
		PullNumber int `json:"pull_number"`
		Priority   string
	}
}

// queues reads r's GET /api/locks/queue-status: lock path -> its status.
func (h *harness) queues(r *testdrive.Replica) map[string]queueStatus {
	h.t.Helper()
	body := h.api(r, http.MethodGet, "/api/locks/queue-status", http.StatusOK)
	var status struct {
		Data struct {
			QueueEnabled bool `json:"queue_enabled"`
			Locks        []queueStatus
		}
	}
	Ok(h.t, json.Unmarshal(body, &status))
	Assert(h.t, status.Data.QueueEnabled, "the queue is off on %s: %s", r.Name(), body)
	out := map[string]queueStatus{}
	for _, l := range status.Data.Locks {
		out[l.Path] = l
	}
	return out
}

// queuedPulls is dir's queue as r reports it, head first.
func (h *harness) queuedPulls(r *testdrive.Replica, dir string) []int {
	h.t.Helper()
	var pulls []int
	for _, e := range h.queues(r)[dir].Queue {
		pulls = append(pulls, e.PullNumber)
	}
	return pulls
}

// waitQueue waits until every replica reports dir held by holder (0: free)
// with the pulls waiting in that order.
func (h *harness) waitQueue(dir string, holder int, waiting ...int) {
	h.t.Helper()
	h.eventually(fmt.Sprintf("%s held by #%d with %v waiting", dir, holder, waiting), func() (bool, string) {
		for _, r := range h.fleet.Replicas {
			if !r.Running() {
				continue
			}
			l := h.queues(r)[dir]
			got := 0
			if l.Holder != nil {
				got = l.Holder.PullNumber
			}
			pulls := h.queuedPulls(r, dir)
			if got != holder || !slices.Equal(pulls, waiting) {
				return false, fmt.Sprintf("%s reports holder #%d, queue %v", r.Name(), got, pulls)
			}
		}
		return true, ""
	})
}

// waitNoticesDelivered waits until the outbox holds no notice: every
// hand-over has been commented and its re-plan started.
func (h *harness) waitNoticesDelivered() {
	h.t.Helper()
	h.eventually("the queue's notices to be delivered", func() (bool, string) {
		left := h.exists(outboxKey) || h.exists(outboxNoticesKey)
		return !left, h.describeRedis()
	})
}

// planSucceeded says whether the last status of the plan of the project in
// dir on pr's current head is a success set after m.
func (h *harness) planSucceeded(pr *vcssim.PullRequest, m mark, dir string) bool {
	h.t.Helper()
	current, err := h.sim.PullRequest(repoFull, pr.Number)
	Ok(h.t, err)
	var last *vcssim.Status
	for _, st := range h.sim.Statuses(repoFull, current.HeadSHA) {
		if st.Context == "atlantis/plan: "+dir+"/default" {
			last = &st
		}
	}
	return last != nil && last.State == "success" && !last.CreatedAt.Before(m.time)
}

// mergeFiles is the union of file sets.
func mergeFiles(sets ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, s := range sets {
		maps.Copy(out, s)
	}
	return out
}
