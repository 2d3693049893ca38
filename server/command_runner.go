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
// so do the queue's re-plans (commandPlanner, through the same wrappers).
// Wrapping it is how enhanced locking runs one command per pull across the
// fleet (leases, outermost, so a command waiting its turn is not yet tracked
// as running) and learns which pull plans (policy, nil without the priority
// queue).
// TestSeamTypes fails if an upstream upgrade changes the field's type.
func installCommandRunner(srv *upstream.Server, leases *leasedCommandRunner, policy *queue.Policy) (events.CommandRunner, error) {
	if srv.VCSEventsController == nil || srv.VCSEventsController.CommandRunner == nil {
		return nil, fmt.Errorf("upstream's server has no VCS events command runner: this upstream version is not supported by enhanced locking; start with --enhanced-locking-enabled=false")
	}
	runner := srv.VCSEventsController.CommandRunner
	if policy != nil {
		runner = &trackingCommandRunner{next: runner, policy: policy}
	}
	leases.next = runner
	srv.VCSEventsController.CommandRunner = leases
	return leases, nil
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
