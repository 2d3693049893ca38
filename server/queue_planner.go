package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/runatlantis/atlantis/server/core/db"
	"github.com/runatlantis/atlantis/server/events"
	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/commandlease"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/queue"
)

// commandPlanner re-plans a project for the pull handed its lock, as if the
// pull's author had commented `atlantis plan -p <project>` (or `-d <dir> -w
// <workspace>` for an unnamed project), through the command runners every
// webhook command goes through, the pull's command lease outermost. Upstream
// then reads the pull's current head from the VCS, comments the plan and
// records its status, which tells whether the plan failed.
type commandPlanner struct {
	leases *leasedCommandRunner
	pulls  db.Database
}

func (p commandPlanner) Replan(ctx context.Context, lock models.ProjectLock, start func() error) error {
	cmd := &events.CommentCommand{Name: command.Plan}
	if lock.Project.ProjectName != "" {
		cmd.ProjectName = lock.Project.ProjectName
	} else {
		cmd.RepoRelDir, cmd.Workspace = lock.Project.Path, lock.Workspace
	}
	ran := false
	err := p.leases.run(ctx, lock.Pull.BaseRepo, lock.Pull.Num, commentCommandName(cmd), start, func() {
		ran = true
		p.leases.next.RunCommentCommand(lock.Pull.BaseRepo, nil, nil, lock.User, lock.Pull.Num, cmd)
	})
	switch {
	case errors.Is(err, commandlease.ErrLeaseLost), err != nil && !ran && ctx.Err() != nil:
		return fmt.Errorf("%w: %w", queue.ErrReplanInterrupted, err)
	case err != nil:
		return err
	}

	status, err := p.pulls.GetPullStatus(lock.Pull)
	if err != nil {
		return fmt.Errorf("reading the pull's status after the plan: %w", err)
	}
	if status != nil {
		for _, project := range status.Projects {
			if project.RepoRelDir != lock.Project.Path || project.Workspace != lock.Workspace || project.ProjectName != lock.Project.ProjectName {
				continue
			}
			if project.Status == models.ErroredPlanStatus {
				return fmt.Errorf("the plan failed: its output is in the pull request's comments")
			}
			return nil
		}
	}
	return fmt.Errorf("no plan of the project was recorded: see the pull request's comments for why it did not run")
}
