package server

import (
	"github.com/runatlantis/atlantis/server/events"
	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"
)

// fencedWorkingDir is upstream's working directory that refuses, for a
// fenced pull, every call that runs git or removes files in its checkout;
// paths and locks go through.
type fencedWorkingDir struct {
	events.WorkingDir
	fence pullFence
}

func (w *fencedWorkingDir) Clone(logger logging.SimpleLogging, headRepo models.Repo, p models.PullRequest, workspace string) (string, error) {
	if err := w.fence.check("clone", p.BaseRepo.FullName, p.Num); err != nil {
		return "", err
	}
	return w.WorkingDir.Clone(logger, headRepo, p, workspace)
}

func (w *fencedWorkingDir) MergeAgain(logger logging.SimpleLogging, headRepo models.Repo, p models.PullRequest, workspace string) (bool, error) {
	if err := w.fence.check("merge the base branch again", p.BaseRepo.FullName, p.Num); err != nil {
		return false, err
	}
	return w.WorkingDir.MergeAgain(logger, headRepo, p, workspace)
}

// HasDiverged answers false for a fenced pull: upstream then runs no git to
// bring the checkout up to date.
func (w *fencedWorkingDir) HasDiverged(logger logging.SimpleLogging, cloneDir string, projectPath string, autoplanWhenModified []string, p models.PullRequest) bool {
	if w.fence.check("compare the checkout with the base branch", p.BaseRepo.FullName, p.Num) != nil {
		return false
	}
	return w.WorkingDir.HasDiverged(logger, cloneDir, projectPath, autoplanWhenModified, p)
}

func (w *fencedWorkingDir) HasDivergedFromPullHead(logger logging.SimpleLogging, cloneDir string, projectPath string, autoplanWhenModified []string, p models.PullRequest) bool {
	if w.fence.check("compare the checkout with the pull's head", p.BaseRepo.FullName, p.Num) != nil {
		return false
	}
	return w.WorkingDir.HasDivergedFromPullHead(logger, cloneDir, projectPath, autoplanWhenModified, p)
}

func (w *fencedWorkingDir) GetDivergedFiles(logger logging.SimpleLogging, cloneDir string, p models.PullRequest) ([]string, error) {
	if err := w.fence.check("list the files changed on the base branch", p.BaseRepo.FullName, p.Num); err != nil {
		return nil, err
	}
	return w.WorkingDir.GetDivergedFiles(logger, cloneDir, p)
}

func (w *fencedWorkingDir) GetDivergedFilesFromPullHead(logger logging.SimpleLogging, cloneDir string, p models.PullRequest) ([]string, error) {
	if err := w.fence.check("list the files changed on the pull's head", p.BaseRepo.FullName, p.Num); err != nil {
		return nil, err
	}
	return w.WorkingDir.GetDivergedFilesFromPullHead(logger, cloneDir, p)
}

func (w *fencedWorkingDir) Delete(logger logging.SimpleLogging, r models.Repo, p models.PullRequest) error {
	if err := w.fence.check("delete the checkout", p.BaseRepo.FullName, p.Num); err != nil {
		return err
	}
	return w.WorkingDir.Delete(logger, r, p)
}

func (w *fencedWorkingDir) DeleteForWorkspace(logger logging.SimpleLogging, r models.Repo, p models.PullRequest, workspace string) error {
	if err := w.fence.check("delete the checkout", p.BaseRepo.FullName, p.Num); err != nil {
		return err
	}
	return w.WorkingDir.DeleteForWorkspace(logger, r, p, workspace)
}

func (w *fencedWorkingDir) DeletePlan(logger logging.SimpleLogging, r models.Repo, p models.PullRequest, workspace string, path string, projectName string) error {
	if err := w.fence.check("delete a plan", p.BaseRepo.FullName, p.Num); err != nil {
		return err
	}
	return w.WorkingDir.DeletePlan(logger, r, p, workspace, path, projectName)
}

func (w *fencedWorkingDir) GetGitUntrackedFiles(logger logging.SimpleLogging, r models.Repo, p models.PullRequest, workspace string) ([]string, error) {
	if err := w.fence.check("list untracked files", p.BaseRepo.FullName, p.Num); err != nil {
		return nil, err
	}
	return w.WorkingDir.GetGitUntrackedFiles(logger, r, p, workspace)
}
