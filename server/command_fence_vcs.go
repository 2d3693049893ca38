package server

import (
	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/events/vcs"
	"github.com/runatlantis/atlantis/server/logging"
)

// fencedVCSClient is upstream's VCS client that refuses every write about a
// fenced pull; reads go through.
type fencedVCSClient struct {
	vcs.Client
	fence pullFence
}

func (c *fencedVCSClient) CreateComment(logger logging.SimpleLogging, repo models.Repo, pullNum int, comment string, command string) error {
	if err := c.fence.check("comment", repo.FullName, pullNum); err != nil {
		return err
	}
	return c.Client.CreateComment(logger, repo, pullNum, comment, command)
}

func (c *fencedVCSClient) HidePrevCommandComments(logger logging.SimpleLogging, repo models.Repo, pullNum int, command string, dir string) error {
	if err := c.fence.check("hide comments", repo.FullName, pullNum); err != nil {
		return err
	}
	return c.Client.HidePrevCommandComments(logger, repo, pullNum, command, dir)
}

func (c *fencedVCSClient) ReactToComment(logger logging.SimpleLogging, repo models.Repo, pullNum int, commentID int64, reaction string) error {
	if err := c.fence.check("react to a comment", repo.FullName, pullNum); err != nil {
		return err
	}
	return c.Client.ReactToComment(logger, repo, pullNum, commentID, reaction)
}

func (c *fencedVCSClient) UpdateStatus(logger logging.SimpleLogging, repo models.Repo, pull models.PullRequest, state models.CommitStatus, src string, description string, url string) error {
	if err := c.fence.check("set a commit status", pull.BaseRepo.FullName, pull.Num); err != nil {
		return err
	}
	return c.Client.UpdateStatus(logger, repo, pull, state, src, description, url)
}

func (c *fencedVCSClient) DiscardReviews(logger logging.SimpleLogging, repo models.Repo, pull models.PullRequest) error {
	if err := c.fence.check("dismiss reviews", pull.BaseRepo.FullName, pull.Num); err != nil {
		return err
	}
	return c.Client.DiscardReviews(logger, repo, pull)
}

func (c *fencedVCSClient) MergePull(logger logging.SimpleLogging, pull models.PullRequest, pullOptions models.PullRequestOptions) error {
	if err := c.fence.check("merge", pull.BaseRepo.FullName, pull.Num); err != nil {
		return err
	}
	return c.Client.MergePull(logger, pull, pullOptions)
}
