// Package reaper releases the locks and queue entries of pull requests that
// were closed or merged while Atlantis missed the webhook saying so (upstream
// issues #5807 and #5708): without it they stay until someone comments
// `atlantis unlock` on a closed pull request or deletes them by hand.
package reaper

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"
	tally "github.com/uber-go/tally/v4"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/commandlease"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/events"
)

// PullState is what the VCS says of a pull request.
type PullState int

const (
	PullOpen PullState = iota
	PullClosed
	PullMerged
)

func (s PullState) String() string {
	switch s {
	case PullClosed:
		return "closed"
	case PullMerged:
		return "merged"
	default:
		return "open"
	}
}

// PullStates asks the VCS whether a pull request is still open.
type PullStates interface {
	PullState(repo models.Repo, pullNum int) (PullState, error)
}

// Locks is the part of the enhanced adapter the reaper uses: the locks to
// check, and the release a closed pull request's webhook would have made,
// which takes the pull out of every queue first and hands each lock to the
// head of its queue.
type Locks interface {
	List() ([]models.ProjectLock, error)
	UnlockByPull(repoFullName string, pullNum int) ([]models.ProjectLock, error)
}

// Options configures a Reaper.
type Options struct {
	// Interval is how often a pass runs.
	Interval time.Duration
	// CallsPerSecond bounds the VCS API calls a pass makes, so a big fleet
	// stays within the VCS's rate limits: one call per pull checked.
	CallsPerSecond float64
	// DryRun logs what would be released and releases nothing.
	DryRun bool
	// Events hears of every lock released (EventLockReaped), which the
	// metrics count as atlantis_enhanced_locks_reaped_total.
	Events events.Publisher
	Logger logging.SimpleLogging
	// Scope counts the locks a dry run would release.
	Scope tally.Scope
	// CommandWait bounds how long a pass waits for a running command of a
	// pull to end before it leaves the pull to the next pass (default 30s).
	CommandWait time.Duration
}

// DefaultCommandWait is Options.CommandWait's default.
const DefaultCommandWait = 30 * time.Second

// Leases are the command leases a pass holds.
type Leases struct {
	// Turn makes one replica reap at a time: give its manager a short wait
	// timeout, since a replica that finds another reaping skips its pass.
	Turn *commandlease.Manager
	// Pulls is the manager the pull requests' commands take their leases
	// from: the reaper holds a pull's lease as one of its commands does.
	Pulls *commandlease.Manager
}

// reaperPull is the pseudo pull whose command lease a pass holds, so that
// one replica reaps at a time.
var reaperPull = enhanced.PullRef{RepoFullName: "atlantis-enhanced/stale-lock-reaper", Num: 0}

// Reaper checks the pull requests that hold locks or queue entries against
// the VCS, and releases those of closed or merged pull requests.
//
// Invariant: a pull request's locks are released only after the VCS said,
// during this pass, that it is closed or merged, and only while the reaper
// still holds the pull's command lease it took before asking: no command of
// the pull (a plan after it was reopened) runs between the answer and the
// release. Any error (the VCS down, a VCS the reaper cannot ask, a command
// of the pull that keeps running) leaves the pull's locks as they are.
type Reaper struct {
	locks  Locks
	queues enhanced.QueueBackend
	states PullStates
	leases Leases
	opts   Options
	// candidates counts the locks dry runs would have released.
	candidates tally.Counter
}

// New returns a reaper. queues may be nil (no priority queue).
func New(locks Locks, queues enhanced.QueueBackend, states PullStates, leases Leases, opts Options) (*Reaper, error) {
	if opts.Interval <= 0 {
		return nil, fmt.Errorf("the stale-lock reaper interval must be positive, got %s", opts.Interval)
	}
	if opts.CallsPerSecond <= 0 {
		return nil, fmt.Errorf("the stale-lock reaper rate must be positive, got %g", opts.CallsPerSecond)
	}
	if leases.Turn == nil || leases.Pulls == nil {
		return nil, errors.New("the stale-lock reaper needs the command leases of its turn and of the pull requests")
	}
	if opts.CommandWait <= 0 {
		opts.CommandWait = DefaultCommandWait
	}
	if opts.Logger == nil {
		opts.Logger = enhanced.NopLogger{}
	}
	if opts.Scope == nil {
		opts.Scope = tally.NoopScope
	}
	if opts.Events == nil {
		opts.Events = events.PublisherFunc(func(events.Event) {})
	}
	return &Reaper{locks: locks, queues: queues, states: states, leases: leases, opts: opts,
		candidates: opts.Scope.Counter("locks_reap_candidates_total")}, nil
}

// Run makes a pass every interval until ctx ends.
func (r *Reaper) Run(ctx context.Context) {
	tick := time.NewTicker(r.opts.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if _, err := r.Pass(ctx); err != nil {
				r.opts.Logger.Warn("stale-lock reaper: %s", err)
			}
		}
	}
}

// Result is what one pass did.
type Result struct {
	// Checked counts the pull requests asked about.
	Checked int
	// Released are the locks freed (or, in a dry run, that would be).
	Released []models.ProjectLock
	// Skipped is true when another replica was reaping.
	Skipped bool
}

// Pass checks every pull request holding a lock or a queue entry once.
func (r *Reaper) Pass(ctx context.Context) (Result, error) {
	lease, err := r.leases.Turn.Acquire(ctx, reaperPull, "stale-lock reaper pass")
	var busy *commandlease.WaitTimeoutError
	switch {
	case errors.As(err, &busy):
		// Another replica reaps now; this one's turn comes at a later
		// interval.
		return Result{Skipped: true}, nil
	case err != nil:
		return Result{}, err
	}
	defer lease.Release()
	pulls, err := r.pulls(ctx)
	if err != nil {
		return Result{}, err
	}
	var res Result
	pace := time.NewTicker(time.Duration(float64(time.Second) / r.opts.CallsPerSecond))
	defer pace.Stop()
	for i, p := range pulls {
		if i > 0 {
			select {
			case <-ctx.Done():
				return res, ctx.Err()
			case <-pace.C:
			}
		}
		if err := lease.Err(); err != nil {
			return res, fmt.Errorf("stopped after %d pull requests: %w", res.Checked, err)
		}
		res.Checked++
		res.Released = append(res.Released, r.reap(ctx, p)...)
	}
	return res, nil
}

// reap asks the VCS about p and releases its locks if it is closed or
// merged, all under p's command lease, and returns what it released (in a
// dry run, what it would have).
func (r *Reaper) reap(ctx context.Context, p pullHoldings) []models.ProjectLock {
	name := fmt.Sprintf("%s#%d", p.repo.FullName, p.num)
	waitCtx, cancel := context.WithTimeout(ctx, r.opts.CommandWait)
	lease, err := r.leases.Pulls.Acquire(waitCtx, enhanced.PullRef{RepoFullName: p.repo.FullName, Num: p.num}, "stale-lock reaper")
	cancel()
	if err != nil {
		r.opts.Logger.Warn("stale-lock reaper: %s is left to the next pass (its locks stay): %s", name, err)
		return nil
	}
	defer lease.Release()
	state, err := r.states.PullState(p.repo, p.num)
	if err != nil {
		r.opts.Logger.Warn("stale-lock reaper: asking the VCS about %s (its locks stay): %s", name, err)
		return nil
	}
	if state == PullOpen {
		return nil
	}
	if r.opts.DryRun {
		r.opts.Logger.Info("stale-lock reaper (dry run): %s is %s; it would release %d lock(s) and its queue entries: %s",
			name, state, len(p.locks), lockNames(p.locks))
		r.candidates.Inc(int64(len(p.locks)))
		return p.locks
	}
	// The VCS answer holds only while no command of the pull could have run.
	if err := lease.Err(); err != nil {
		r.opts.Logger.Warn("stale-lock reaper: %s is %s, but its command lease ran out before the release (its locks stay): %s", name, state, err)
		return nil
	}
	released, err := r.locks.UnlockByPull(p.repo.FullName, p.num)
	if err != nil {
		r.opts.Logger.Warn("stale-lock reaper: releasing the locks of %s pull request %s: %s", state, name, err)
		return nil
	}
	r.opts.Logger.Info("stale-lock reaper: %s is %s; released %d lock(s) and its queue entries: %s",
		name, state, len(released), lockNames(released))
	for i := range released {
		r.opts.Events.Publish(events.Event{Type: events.EventLockReaped, Time: time.Now(), Lock: &released[i]})
	}
	return released
}

// pullHoldings is one pull request and the locks it holds.
type pullHoldings struct {
	repo  models.Repo
	num   int
	locks []models.ProjectLock
}

// pulls lists every pull request holding a lock or a durable queue entry,
// in a fixed order so that passes interrupted by the rate limit resume
// evenly across pulls.
func (r *Reaper) pulls(ctx context.Context) ([]pullHoldings, error) {
	byKey := map[string]*pullHoldings{}
	add := func(pull models.PullRequest) *pullHoldings {
		key := fmt.Sprintf("%s#%d", pull.BaseRepo.FullName, pull.Num)
		p, ok := byKey[key]
		if !ok {
			p = &pullHoldings{repo: pull.BaseRepo, num: pull.Num}
			byKey[key] = p
		}
		return p
	}
	locks, err := r.locks.List()
	if err != nil {
		return nil, fmt.Errorf("listing the locks: %w", err)
	}
	for _, l := range locks {
		p := add(l.Pull)
		p.locks = append(p.locks, l)
	}
	if r.queues != nil {
		queues, err := r.queues.Queues(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing the queues: %w", err)
		}
		for _, q := range queues {
			for _, e := range q.Entries {
				if !e.Synchronous {
					add(e.Lock.Pull)
				}
			}
		}
	}
	pulls := make([]pullHoldings, 0, len(byKey))
	for _, p := range byKey {
		pulls = append(pulls, *p)
	}
	sort.Slice(pulls, func(i, j int) bool {
		if pulls[i].repo.FullName != pulls[j].repo.FullName {
			return pulls[i].repo.FullName < pulls[j].repo.FullName
		}
		return pulls[i].num < pulls[j].num
	})
	return pulls, nil
}

func lockNames(locks []models.ProjectLock) string {
	names := make([]string, 0, len(locks))
	for _, l := range locks {
		names = append(names, models.GenerateLockKey(l.Project, l.Workspace))
	}
	sort.Strings(names)
	return fmt.Sprint(names)
}
