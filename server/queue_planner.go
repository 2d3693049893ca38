package server

import (
	"context"
	"fmt"

	"github.com/runatlantis/atlantis/server/core/db"
	"github.com/runatlantis/atlantis/server/events"
	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"
)

// commandPlanner re-plans a project for the pull handed its lock, as if the
// pull's author had commented `atlantis plan -p <project>` (or `-d <dir> -w
// <workspace>` for an unnamed project), through the command runner every
// webhook command goes through. Upstream then reads the pull's current head
// from the VCS, comments the plan and records its status, which tells
// whether the plan failed.
type commandPlanner struct {
	runner events.CommandRunner
	pulls  db.Database
}

func (p commandPlanner) Replan(_ context.Context, lock models.ProjectLock) error {
	cmd := &events.CommentCommand{Name: command.Plan}
	if lock.Project.ProjectName != "" {
		cmd.ProjectName = lock.Project.ProjectName
	} else {
		cmd.RepoRelDir, cmd.Workspace = lock.Project.Path, lock.Workspace
	}
	p.runner.RunCommentCommand(lock.Pull.BaseRepo, nil, nil, lock.User, lock.Pull.Num, cmd)

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
