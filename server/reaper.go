package server

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/commandlease"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/reaper"
)

// reaperTurnWait is how long a replica waits for another replica's pass to
// end before it skips its own.
const reaperTurnWait = time.Second

// startReaper runs the stale-lock reaper until ctx ends, when
// --enhanced-locking-stale-lock-reaper is on.
func (s *Server) startReaper(ctx context.Context, running *sync.WaitGroup) error {
	f := s.Config.Features
	if !f.StaleLockReaper || s.Adapter == nil {
		return nil
	}
	turns, err := commandlease.NewManager(s.leaseStore, commandlease.Options{
		Replica:     replicaName(s.Port),
		TTL:         f.CommandLeaseTTL,
		WaitTimeout: reaperTurnWait,
		Logger:      s.Logger,
	})
	if err != nil {
		return fmt.Errorf("enhanced locking: stale-lock reaper: %w", err)
	}
	var queues enhanced.QueueBackend
	if s.queue != nil {
		queues = s.queue.backend
	}
	r, err := reaper.New(s.Adapter, queues, upstreamPullStates{s}, reaper.Leases{Turn: turns, Pulls: s.leases}, reaper.Options{
		Interval:       f.StaleLockReaperInterval,
		CallsPerSecond: float64(f.StaleLockReaperCallsPerMinute) / 60,
		DryRun:         f.StaleLockReaperDryRun,
		Events:         s.events,
		Logger:         s.Logger,
		Scope:          s.StatsScope.SubScope("enhanced"),
	})
	if err != nil {
		return fmt.Errorf("enhanced locking: stale-lock reaper: %w", err)
	}
	s.Logger.Info("enhanced locking: stale-lock reaper on (every %s, at most %d VCS calls a minute, dry run %v)",
		f.StaleLockReaperInterval, f.StaleLockReaperCallsPerMinute, f.StaleLockReaperDryRun)
	running.Go(func() { r.Run(ctx) })
	return nil
}

// upstreamPullStates asks the VCS through the pull getters upstream's
// command runner already holds, with upstream's credentials and clients.
type upstreamPullStates struct{ s *Server }

func (u upstreamPullStates) PullState(repo models.Repo, pullNum int) (reaper.PullState, error) {
	runner := u.s.CommandRunner
	if runner == nil {
		return reaper.PullOpen, fmt.Errorf("upstream's command runner is not built")
	}
	switch repo.VCSHost.Type {
	case models.Github:
		if runner.GithubPullGetter == nil {
			break
		}
		pull, err := runner.GithubPullGetter.GetPullRequest(u.s.Logger, repo, pullNum)
		if err != nil {
			return reaper.PullOpen, err
		}
		return stateOf(pull.GetMerged(), pull.GetState() == "closed"), nil
	case models.Gitlab:
		if runner.GitlabMergeRequestGetter == nil {
			break
		}
		mr, err := runner.GitlabMergeRequestGetter.GetMergeRequest(u.s.Logger, repo.FullName, pullNum)
		if err != nil {
			return reaper.PullOpen, err
		}
		return stateOf(mr.State == "merged", mr.State == "closed"), nil
	case models.Gitea:
		if runner.GiteaPullGetter == nil {
			break
		}
		pull, err := runner.GiteaPullGetter.GetPullRequest(u.s.Logger, repo, pullNum)
		if err != nil {
			return reaper.PullOpen, err
		}
		return stateOf(pull.HasMerged, pull.State == "closed"), nil
	}
	return reaper.PullOpen, fmt.Errorf("the stale-lock reaper cannot ask %s about pull requests", repo.VCSHost.Type.String())
}

func stateOf(merged, closed bool) reaper.PullState {
	switch {
	case merged:
		return reaper.PullMerged
	case closed:
		return reaper.PullClosed
	}
	return reaper.PullOpen
}
