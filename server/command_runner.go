package server

import (
	"fmt"

	upstream "github.com/runatlantis/atlantis/server"
	"github.com/runatlantis/atlantis/server/events"
	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/queue"
)

// installCommandRunner is the second seam between upstream and enhanced
// locking, beside installLockingAdapter.
//
// Every command a webhook asks for (a comment command, an autoplan) goes
// through VCSEventsController.CommandRunner, each on its own goroutine, and
// so do the queue's re-plans, which call the returned runner. Wrapping it is
// how enhanced locking learns which pull runs which command: the lock
// requests of a plan queue (queue.Policy). TestSeamTypes fails if an
// upstream upgrade changes the field's type.
func installCommandRunner(srv *upstream.Server, policy *queue.Policy) (events.CommandRunner, error) {
	if srv.VCSEventsController == nil || srv.VCSEventsController.CommandRunner == nil {
		return nil, fmt.Errorf("upstream's server has no VCS events command runner: this upstream version is not supported by enhanced locking's priority queue; start with --enhanced-locking-priority-queue=false")
	}
	runner := &trackingCommandRunner{next: srv.VCSEventsController.CommandRunner, policy: policy}
	srv.VCSEventsController.CommandRunner = runner
	return runner, nil
}

// trackingCommandRunner tells the queue policy which pull runs a command,
// and whether it plans, for as long as the command runs.
type trackingCommandRunner struct {
	next   events.CommandRunner
	policy *queue.Policy
}

func (r *trackingCommandRunner) RunCommentCommand(baseRepo models.Repo, maybeHeadRepo *models.Repo, maybePull *models.PullRequest, user models.User, pullNum int, cmd *events.CommentCommand) {
	done := r.policy.Track(baseRepo, pullNum, cmd != nil && cmd.Name == command.Plan)
	defer done()
	r.next.RunCommentCommand(baseRepo, maybeHeadRepo, maybePull, user, pullNum, cmd)
}

func (r *trackingCommandRunner) RunAutoplanCommand(baseRepo models.Repo, headRepo models.Repo, pull models.PullRequest, user models.User) {
	done := r.policy.Track(baseRepo, pull.Num, true)
	defer done()
	r.next.RunAutoplanCommand(baseRepo, headRepo, pull, user)
}
