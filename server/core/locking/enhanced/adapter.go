package enhanced

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/runatlantis/atlantis/server/core/db"
	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"
	tally "github.com/uber-go/tally/v4"
)

// AdapterOptions configures an Adapter. The zero value routes every lock to
// the backend, answers at once, never retries and never falls back.
type AdapterOptions struct {
	// BackendName is shown in /healthz and logs, e.g. "redis".
	BackendName string
	// SeparateLegacyLocks says the legacy database holds locks of its own, apart
	// from the backend's. Then every lock change is mirrored into it, so that
	// turning enhanced locking off finds every lock, and unlocks clean it too.
	// It must be false when the backend stores its locks in the legacy
	// database itself.
	SeparateLegacyLocks bool
	// SharedLegacyLocks says the legacy database is upstream's Redis database
	// reading the very keys the backend writes, as in a fleet that mixes
	// upstream and enhanced replicas. Upstream replicas index nothing, so
	// releasing a pull's locks also asks the legacy database for any the
	// backend's index does not know: a scan, as upstream itself does.
	SharedLegacyLocks bool
	// FallbackToLegacy sends lock operations to the legacy database while the
	// backend is unreachable. Only safe for a single replica.
	FallbackToLegacy bool
	// WaitTimeout bounds how long a request for a lock held by another pull
	// waits for its release; zero answers at once as upstream does.
	WaitTimeout time.Duration
	// OperationTimeout bounds each backend call, waits excluded.
	OperationTimeout time.Duration
	Retry            RetryPolicy
	Logger           logging.SimpleLogging
	Scope            tally.Scope
	Events           Publisher
}

// Adapter is upstream's db.Database with lock operations served by an enhanced
// Backend. Pull status stays in the legacy database upstream created, so
// installing it changes where locks live and nothing else.
type Adapter struct {
	legacy  db.Database
	backend Backend
	opts    AdapterOptions
	metrics adapterMetrics

	// mu is held for reading by every lock operation and for writing while the
	// mode changes, so an operation runs entirely in one mode.
	mu       sync.RWMutex
	fallback bool
	// pending are the lock changes made in the legacy database during a
	// fallback, replayed into the backend when it returns. pendingMu also
	// serialises the fallback's legacy operations.
	pendingMu sync.Mutex
	pending   []pendingChange
}

var _ db.Database = (*Adapter)(nil)

// NewAdapter returns an Adapter routing locks to backend and pull status to
// legacy.
func NewAdapter(legacy db.Database, backend Backend, opts AdapterOptions) *Adapter {
	if opts.Scope == nil {
		opts.Scope = tally.NoopScope
	}
	if opts.Events == nil {
		opts.Events = PublisherFunc(func(Event) {})
	}
	if opts.Logger == nil {
		opts.Logger = NopLogger{}
	}
	if opts.OperationTimeout <= 0 {
		opts.OperationTimeout = 10 * time.Second
	}
	if opts.BackendName == "" {
		opts.BackendName = "enhanced"
	}
	return &Adapter{legacy: &serializedDatabase{Database: legacy}, backend: backend, opts: opts, metrics: newAdapterMetrics(opts.Scope)}
}

// ActiveBackend names where lock operations go right now.
func (a *Adapter) ActiveBackend() string {
	a.mu.RLock()
	defer a.mu.RUnlock()
	if a.fallback {
		return "legacy-fallback"
	}
	return a.opts.BackendName
}

// TryLock implements db.Database.
func (a *Adapter) TryLock(lock models.ProjectLock) (bool, models.ProjectLock, error) {
	start := time.Now()
	var acquired bool
	var current models.ProjectLock
	err := a.run(func() error {
		err := a.call(func(ctx context.Context) error {
			var err error
			req := LockRequest{Lock: lock, Priority: PriorityNormal}
			if a.opts.WaitTimeout > 0 {
				acquired, current, err = a.backend.TryLockWithTimeout(ctx, req, a.opts.WaitTimeout)
			} else {
				acquired, current, err = a.backend.TryLock(ctx, req)
			}
			return err
		}, a.opts.WaitTimeout)
		if err == nil && acquired && a.opts.SeparateLegacyLocks {
			a.mirrorLock(current)
		}
		return err
	}, func() error {
		var err error
		acquired, current, err = a.legacy.TryLock(lock)
		if err == nil && acquired {
			a.remember(pendingChange{lock: current})
		}
		return err
	})
	a.metrics.recordTryLock(start, acquired, err)
	if err != nil {
		return false, models.ProjectLock{}, a.wrap("lock", err)
	}
	return acquired, current, nil
}

// Unlock implements db.Database. It releases by owner, not by key: a retry
// after a lost reply must not release the pull the lock was handed to in the
// meantime. It cleans the legacy database as well, where a stray copy the
// backend never had may live.
func (a *Adapter) Unlock(project models.Project, workspace string) (*models.ProjectLock, error) {
	holder, err := a.GetLock(project, workspace)
	if err != nil {
		return nil, err
	}
	if holder == nil && a.opts.SeparateLegacyLocks {
		if holder, err = a.legacy.GetLock(project, workspace); err != nil {
			return nil, a.wrap("unlock", err)
		}
	}
	if holder == nil {
		return nil, nil
	}
	return a.UnlockIfOwnedByPull(project, workspace, holder.Pull.Num)
}

// UnlockIfOwnedByPull implements db.Database.
func (a *Adapter) UnlockIfOwnedByPull(project models.Project, workspace string, pullNum int) (*models.ProjectLock, error) {
	var lock *models.ProjectLock
	err := a.run(func() error {
		err := a.call(func(ctx context.Context) error {
			var err error
			lock, err = a.backend.UnlockIfOwnedByPull(ctx, project, workspace, pullNum)
			return err
		}, 0)
		if err != nil || !a.opts.SeparateLegacyLocks {
			return err
		}
		legacyLock, legacyErr := a.legacy.UnlockIfOwnedByPull(project, workspace, pullNum)
		if legacyErr != nil {
			a.mirrorFailed(lock, legacyErr)
		}
		if lock == nil {
			lock = legacyLock
		}
		return nil
	}, func() error {
		var err error
		lock, err = a.legacy.UnlockIfOwnedByPull(project, workspace, pullNum)
		if err == nil && lock != nil {
			a.remember(pendingChange{lock: *lock, released: true})
		}
		return err
	})
	return lock, a.wrap("unlock", err)
}

// UnlockByPull implements db.Database.
func (a *Adapter) UnlockByPull(repoFullName string, pullNum int) ([]models.ProjectLock, error) {
	var locks []models.ProjectLock
	err := a.run(func() error {
		err := a.call(func(ctx context.Context) error {
			var err error
			locks, err = a.backend.UnlockByPull(ctx, repoFullName, pullNum)
			return err
		}, 0)
		if err != nil || !(a.opts.SeparateLegacyLocks || a.opts.SharedLegacyLocks) {
			return err
		}
		legacyLocks, legacyErr := a.legacyUnlockByPull(repoFullName, pullNum)
		if legacyErr != nil {
			a.mirrorFailed(nil, legacyErr)
		}
		locks = mergeLocks(locks, legacyLocks)
		return nil
	}, func() error {
		var err error
		locks, err = a.legacyUnlockByPull(repoFullName, pullNum)
		for _, l := range locks {
			a.remember(pendingChange{lock: l, released: true})
		}
		return err
	})
	return locks, a.wrap("unlock", err)
}

// GetLock implements db.Database.
func (a *Adapter) GetLock(project models.Project, workspace string) (*models.ProjectLock, error) {
	var lock *models.ProjectLock
	err := a.run(func() error {
		return a.call(func(ctx context.Context) error {
			var err error
			lock, err = a.backend.GetLock(ctx, project, workspace)
			return err
		}, 0)
	}, func() error {
		var err error
		lock, err = a.legacy.GetLock(project, workspace)
		return err
	})
	return lock, a.wrap("read lock", err)
}

// List implements db.Database.
func (a *Adapter) List() ([]models.ProjectLock, error) {
	var locks []models.ProjectLock
	err := a.run(func() error {
		err := a.call(func(ctx context.Context) error {
			var err error
			locks, err = a.backend.List(ctx)
			return err
		}, 0)
		if err != nil || !a.opts.SharedLegacyLocks {
			return err
		}
		upstreamLocks, err := a.legacy.List()
		locks = mergeLocks(locks, upstreamLocks)
		return err
	}, func() error {
		var err error
		locks, err = a.legacy.List()
		return err
	})
	return locks, a.wrap("list locks", err)
}

// LockCommand implements db.Database: the global apply lock. Command locks
// have no owner, so the legacy copy is a plain copy.
func (a *Adapter) LockCommand(cmdName command.Name, lockTime time.Time) (*command.Lock, error) {
	var lock *command.Lock
	legacyLock := func() error {
		var err error
		lock, err = a.legacy.LockCommand(cmdName, lockTime)
		return err
	}
	err := a.run(func() error {
		err := a.call(func(ctx context.Context) error {
			var err error
			lock, err = a.backend.LockCommand(ctx, cmdName, lockTime)
			return err
		}, 0)
		if err == nil && a.opts.SeparateLegacyLocks {
			a.mirrorCommandLock(cmdName, lockTime)
		}
		return err
	}, func() error {
		if err := legacyLock(); err != nil {
			return err
		}
		a.remember(pendingChange{isCommand: true, command: cmdName, lockTime: lockTime})
		return nil
	})
	return lock, a.wrap("lock command", err)
}

// UnlockCommand implements db.Database.
func (a *Adapter) UnlockCommand(cmdName command.Name) error {
	err := a.run(func() error {
		err := a.call(func(ctx context.Context) error {
			return a.backend.UnlockCommand(ctx, cmdName)
		}, 0)
		if err == nil && a.opts.SeparateLegacyLocks {
			a.mirrorCommandUnlock(cmdName)
		}
		return err
	}, func() error {
		if err := a.legacy.UnlockCommand(cmdName); err != nil {
			return err
		}
		a.remember(pendingChange{isCommand: true, command: cmdName, released: true})
		return nil
	})
	return a.wrap("unlock command", err)
}

// CheckCommandLock implements db.Database.
func (a *Adapter) CheckCommandLock(cmdName command.Name) (*command.Lock, error) {
	var lock *command.Lock
	err := a.run(func() error {
		return a.call(func(ctx context.Context) error {
			var err error
			lock, err = a.backend.CheckCommandLock(ctx, cmdName)
			return err
		}, 0)
	}, func() error {
		var err error
		lock, err = a.legacy.CheckCommandLock(cmdName)
		return err
	})
	return lock, a.wrap("check command lock", err)
}

// UpdateProjectStatus implements db.Database; pull status stays legacy.
func (a *Adapter) UpdateProjectStatus(pull models.PullRequest, workspace string, repoRelDir string, newStatus models.ProjectPlanStatus) error {
	return a.legacy.UpdateProjectStatus(pull, workspace, repoRelDir, newStatus)
}

// GetPullStatus implements db.Database; pull status stays legacy.
func (a *Adapter) GetPullStatus(pull models.PullRequest) (*models.PullStatus, error) {
	return a.legacy.GetPullStatus(pull)
}

// DeletePullStatus implements db.Database; pull status stays legacy.
func (a *Adapter) DeletePullStatus(pull models.PullRequest) error {
	return a.legacy.DeletePullStatus(pull)
}

// UpdatePullWithResults implements db.Database; pull status stays legacy.
func (a *Adapter) UpdatePullWithResults(pull models.PullRequest, newResults []command.ProjectResult) (models.PullStatus, error) {
	return a.legacy.UpdatePullWithResults(pull, newResults)
}

// Ping implements db.Database: it succeeds when lock operations can be
// served now, so during a fallback the legacy database alone must answer.
func (a *Adapter) Ping() error {
	if err := a.legacy.Ping(); err != nil {
		return fmt.Errorf("legacy database: %w", err)
	}
	if a.ActiveBackend() != a.opts.BackendName {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.opts.OperationTimeout)
	defer cancel()
	if err := a.backend.Ping(ctx); err != nil {
		return fmt.Errorf("enhanced locking backend %s: %w", a.opts.BackendName, err)
	}
	return nil
}

// Close closes the backend. The legacy database belongs to upstream's server,
// which closes it.
func (a *Adapter) Close() error {
	return a.backend.Close()
}

// run performs one operation entirely in the active mode: enhanced (the
// backend call and its legacy copy) or fallback (the legacy database). The
// read lock keeps the mode from changing halfway, which would let a legacy
// copy land after the fallback took over. If the backend turns out to be
// unreachable and fallback is allowed, the operation runs again in fallback.
func (a *Adapter) run(enhanced func() error, legacy func() error) error {
	for {
		a.mu.RLock()
		if a.fallback {
			// One legacy operation at a time, each recorded as it happens:
			// the replay must see changes in the order the legacy database
			// made them, or a release replayed after a later take would
			// free a lock somebody holds.
			a.pendingMu.Lock()
			err := legacy()
			a.pendingMu.Unlock()
			a.mu.RUnlock()
			return err
		}
		err := enhanced()
		a.mu.RUnlock()
		if !a.shouldFallBack(err) {
			return err
		}
	}
}

// call runs op against the backend with a deadline of the operation timeout
// plus wait, retrying while the backend is unreachable if the policy says so.
func (a *Adapter) call(op func(context.Context) error, wait time.Duration) error {
	return a.opts.Retry.do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), a.opts.OperationTimeout+wait)
		defer cancel()
		return op(ctx)
	})
}

// wrap turns an unreachable backend into the message an Atlantis user sees in
// the pull request.
func (a *Adapter) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrBackendUnavailable) {
		outcome := "nothing was changed"
		if op == "lock" {
			outcome = "no lock was granted"
		}
		return fmt.Errorf("enhanced locking could not %s: %s is unreachable, so %s; retry once it is back, or ask an operator to check it: %w", op, a.opts.BackendName, outcome, err)
	}
	return fmt.Errorf("enhanced locking could not %s: %w", op, err)
}

func mergeLocks(a, b []models.ProjectLock) []models.ProjectLock {
	seen := make(map[string]bool, len(a))
	out := make([]models.ProjectLock, 0, len(a)+len(b))
	for _, l := range append(a, b...) {
		key := models.GenerateLockKey(l.Project, l.Workspace)
		if !seen[key] {
			seen[key] = true
			out = append(out, l)
		}
	}
	return out
}
