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
	// fallback, replayed into the backend when it returns.
	pendingMu sync.Mutex
	pending   []pendingChange
}

type pendingChange struct {
	lock     models.ProjectLock
	released bool
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
		opts.Logger = logging.NewNoopLogger(nil)
	}
	if opts.OperationTimeout <= 0 {
		opts.OperationTimeout = 10 * time.Second
	}
	if opts.BackendName == "" {
		opts.BackendName = "enhanced"
	}
	return &Adapter{legacy: legacy, backend: backend, opts: opts, metrics: newAdapterMetrics(opts.Scope)}
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
	acquired, current, err := a.tryLock(lock)
	a.metrics.recordTryLock(start, acquired, err)
	return acquired, current, err
}

func (a *Adapter) tryLock(lock models.ProjectLock) (bool, models.ProjectLock, error) {
	a.mu.RLock()
	if a.fallback {
		defer a.mu.RUnlock()
		return a.legacyTryLock(lock)
	}
	var acquired bool
	var current models.ProjectLock
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
	a.mu.RUnlock()
	if a.shouldFallBack(err) {
		return a.tryLock(lock)
	}
	if err != nil {
		return false, models.ProjectLock{}, a.wrap("lock", err)
	}
	if acquired && a.opts.SeparateLegacyLocks {
		a.mirror(current, func() error {
			_, _, err := a.legacy.TryLock(current)
			return err
		})
	}
	return acquired, current, nil
}

func (a *Adapter) legacyTryLock(lock models.ProjectLock) (bool, models.ProjectLock, error) {
	acquired, current, err := a.legacy.TryLock(lock)
	if err == nil && acquired {
		a.remember(pendingChange{lock: current})
	}
	return acquired, current, err
}

// Unlock implements db.Database. It cleans the legacy database as well, where
// locks taken before enhanced locking was on, or during a fallback, may live.
func (a *Adapter) Unlock(project models.Project, workspace string) (*models.ProjectLock, error) {
	a.mu.RLock()
	if a.fallback {
		defer a.mu.RUnlock()
		lock, err := a.legacy.Unlock(project, workspace)
		if err == nil && lock != nil {
			a.remember(pendingChange{lock: *lock, released: true})
		}
		return lock, err
	}
	var lock *models.ProjectLock
	err := a.call(func(ctx context.Context) error {
		var err error
		lock, err = a.backend.Unlock(ctx, project, workspace)
		return err
	}, 0)
	a.mu.RUnlock()
	if a.shouldFallBack(err) {
		return a.Unlock(project, workspace)
	}
	if err != nil {
		return nil, a.wrap("unlock", err)
	}
	if !a.opts.SeparateLegacyLocks {
		return lock, nil
	}
	// The backend may already have handed the lock to a waiting pull, and a
	// legacy database on the same Redis sees that pull's lock: only remove
	// what belonged to the pull we released.
	var legacyLock *models.ProjectLock
	var legacyErr error
	if lock != nil {
		legacyLock, legacyErr = a.legacy.UnlockIfOwnedByPull(project, workspace, lock.Pull.Num)
	} else {
		legacyLock, legacyErr = a.legacy.Unlock(project, workspace)
	}
	if legacyErr != nil {
		a.mirrorFailed(lock, legacyErr)
	}
	if lock == nil {
		return legacyLock, nil
	}
	return lock, nil
}

// UnlockIfOwnedByPull implements db.Database.
func (a *Adapter) UnlockIfOwnedByPull(project models.Project, workspace string, pullNum int) (*models.ProjectLock, error) {
	a.mu.RLock()
	if a.fallback {
		defer a.mu.RUnlock()
		lock, err := a.legacy.UnlockIfOwnedByPull(project, workspace, pullNum)
		if err == nil && lock != nil {
			a.remember(pendingChange{lock: *lock, released: true})
		}
		return lock, err
	}
	var lock *models.ProjectLock
	err := a.call(func(ctx context.Context) error {
		var err error
		lock, err = a.backend.UnlockIfOwnedByPull(ctx, project, workspace, pullNum)
		return err
	}, 0)
	a.mu.RUnlock()
	if a.shouldFallBack(err) {
		return a.UnlockIfOwnedByPull(project, workspace, pullNum)
	}
	if err != nil {
		return nil, a.wrap("unlock", err)
	}
	if a.opts.SeparateLegacyLocks {
		legacyLock, legacyErr := a.legacy.UnlockIfOwnedByPull(project, workspace, pullNum)
		if legacyErr != nil {
			a.mirrorFailed(lock, legacyErr)
		}
		if lock == nil {
			lock = legacyLock
		}
	}
	return lock, nil
}

// UnlockByPull implements db.Database.
func (a *Adapter) UnlockByPull(repoFullName string, pullNum int) ([]models.ProjectLock, error) {
	a.mu.RLock()
	if a.fallback {
		defer a.mu.RUnlock()
		locks, err := a.legacy.UnlockByPull(repoFullName, pullNum)
		for _, l := range locks {
			a.remember(pendingChange{lock: l, released: true})
		}
		return locks, err
	}
	var locks []models.ProjectLock
	err := a.call(func(ctx context.Context) error {
		var err error
		locks, err = a.backend.UnlockByPull(ctx, repoFullName, pullNum)
		return err
	}, 0)
	a.mu.RUnlock()
	if a.shouldFallBack(err) {
		return a.UnlockByPull(repoFullName, pullNum)
	}
	if err != nil {
		return nil, a.wrap("unlock", err)
	}
	if !a.opts.SeparateLegacyLocks {
		return locks, nil
	}
	legacyLocks, legacyErr := a.legacy.UnlockByPull(repoFullName, pullNum)
	if legacyErr != nil {
		a.mirrorFailed(nil, legacyErr)
	}
	return mergeLocks(locks, legacyLocks), nil
}

// GetLock implements db.Database.
func (a *Adapter) GetLock(project models.Project, workspace string) (*models.ProjectLock, error) {
	var lock *models.ProjectLock
	err := a.read(func(ctx context.Context) error {
		var err error
		lock, err = a.backend.GetLock(ctx, project, workspace)
		return err
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
	err := a.read(func(ctx context.Context) error {
		var err error
		locks, err = a.backend.List(ctx)
		return err
	}, func() error {
		var err error
		locks, err = a.legacy.List()
		return err
	})
	return locks, a.wrap("list locks", err)
}

// LockCommand implements db.Database: the global apply lock.
func (a *Adapter) LockCommand(cmdName command.Name, lockTime time.Time) (*command.Lock, error) {
	var lock *command.Lock
	err := a.write(func(ctx context.Context) error {
		var err error
		lock, err = a.backend.LockCommand(ctx, cmdName, lockTime)
		return err
	}, func() error {
		_, err := a.legacy.LockCommand(cmdName, lockTime)
		return err
	})
	return lock, a.wrap("lock command", err)
}

// UnlockCommand implements db.Database.
func (a *Adapter) UnlockCommand(cmdName command.Name) error {
	return a.wrap("unlock command", a.write(func(ctx context.Context) error {
		return a.backend.UnlockCommand(ctx, cmdName)
	}, func() error {
		return a.legacy.UnlockCommand(cmdName)
	}))
}

// CheckCommandLock implements db.Database.
func (a *Adapter) CheckCommandLock(cmdName command.Name) (*command.Lock, error) {
	var lock *command.Lock
	err := a.read(func(ctx context.Context) error {
		var err error
		lock, err = a.backend.CheckCommandLock(ctx, cmdName)
		return err
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

// Ping implements db.Database: both stores must answer for locks to work.
func (a *Adapter) Ping() error {
	if err := a.legacy.Ping(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.opts.OperationTimeout)
	defer cancel()
	return a.wrap("ping", a.backend.Ping(ctx))
}

// Close closes the backend. The legacy database belongs to upstream's server,
// which closes it.
func (a *Adapter) Close() error {
	return a.backend.Close()
}

// read runs a read in the active mode.
func (a *Adapter) read(enhanced func(context.Context) error, legacy func() error) error {
	a.mu.RLock()
	if a.fallback {
		defer a.mu.RUnlock()
		return legacy()
	}
	err := a.call(enhanced, 0)
	a.mu.RUnlock()
	if a.shouldFallBack(err) {
		return a.read(enhanced, legacy)
	}
	return err
}

// write runs a command-lock change in the active mode and mirrors it.
// Command locks have no owner, so the mirror is a plain copy.
func (a *Adapter) write(enhanced func(context.Context) error, legacy func() error) error {
	a.mu.RLock()
	if a.fallback {
		defer a.mu.RUnlock()
		return legacy()
	}
	err := a.call(enhanced, 0)
	a.mu.RUnlock()
	if a.shouldFallBack(err) {
		return a.write(enhanced, legacy)
	}
	if err == nil && a.opts.SeparateLegacyLocks {
		if mirrorErr := legacy(); mirrorErr != nil {
			a.mirrorFailed(nil, mirrorErr)
		}
	}
	return err
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

// shouldFallBack switches to the legacy database when err says the backend is
// out of reach and fallback is allowed. It reports whether the caller should
// run its operation again, now in fallback mode.
func (a *Adapter) shouldFallBack(err error) bool {
	if !a.opts.FallbackToLegacy || !errors.Is(err, ErrBackendUnavailable) {
		return false
	}
	a.setBackendDown(err)
	return true
}

func (a *Adapter) setBackendDown(cause error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fallback {
		return
	}
	a.fallback = true
	a.metrics.fallback("legacy")
	a.opts.Logger.Warn("enhanced locking: %s is unreachable (%v); locks go to the legacy database until it returns (--enhanced-locking-fallback=boltdb, safe for one replica only)", a.opts.BackendName, cause)
	a.opts.Events.Publish(Event{Type: EventFallbackActivated, Time: time.Now(), Err: cause})
}

// BackendHealthChanged tells the adapter what the health checker saw. Going
// down switches to the legacy database when fallback is allowed; coming back
// replays what happened meanwhile into the backend before it serves again.
func (a *Adapter) BackendHealthChanged(healthy bool) {
	if !a.opts.FallbackToLegacy {
		return
	}
	if !healthy {
		a.setBackendDown(fmt.Errorf("health check failed"))
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.fallback {
		return
	}
	if err := a.reconcile(); err != nil {
		a.opts.Logger.Warn("enhanced locking: %s answers again but the locks taken meanwhile could not be copied back yet: %v; staying on the legacy database", a.opts.BackendName, err)
		return
	}
	a.fallback = false
	a.metrics.fallback(a.opts.BackendName)
	a.opts.Logger.Info("enhanced locking: %s is back; locks taken meanwhile were copied into it", a.opts.BackendName)
	a.opts.Events.Publish(Event{Type: EventFallbackRecovered, Time: time.Now()})
}

// reconcile replays the fallback's lock changes into the backend in the order
// they happened. A lock another pull holds in the backend is reported, never
// overwritten. Called with mu held for writing.
func (a *Adapter) reconcile() error {
	a.pendingMu.Lock()
	defer a.pendingMu.Unlock()
	for len(a.pending) > 0 {
		change := a.pending[0]
		err := a.call(func(ctx context.Context) error {
			if change.released {
				_, err := a.backend.UnlockIfOwnedByPull(ctx, change.lock.Project, change.lock.Workspace, change.lock.Pull.Num)
				return err
			}
			return a.copyLock(ctx, change.lock)
		}, 0)
		if err != nil {
			return err
		}
		a.pending = a.pending[1:]
	}
	a.pending = nil
	return nil
}

// copyLock puts a lock from the legacy database into the backend, reporting a
// conflict if another pull holds it there.
func (a *Adapter) copyLock(ctx context.Context, lock models.ProjectLock) error {
	acquired, current, err := a.backend.TryLock(ctx, LockRequest{Lock: lock, Priority: PriorityNormal})
	if err != nil {
		return err
	}
	if !acquired {
		a.metrics.conflicts.Inc(1)
		a.opts.Logger.Warn("enhanced locking: conflict for %s: the legacy database says pull #%d holds it but %s says pull #%d does; kept %s's, review pull #%d",
			models.GenerateLockKey(lock.Project, lock.Workspace), lock.Pull.Num, a.opts.BackendName, current.Pull.Num, a.opts.BackendName, lock.Pull.Num)
		a.opts.Events.Publish(Event{Type: EventLockConflict, Time: time.Now(), Lock: &lock, Current: &current})
	}
	return nil
}

// ImportLegacyLocks copies every lock and the global apply lock from the
// legacy database into the backend, so enabling enhanced locking on an
// existing install keeps its locks. Copying a lock the same pull already holds
// changes nothing, so it is safe to run at every start.
func (a *Adapter) ImportLegacyLocks(ctx context.Context) (int, error) {
	locks, err := a.legacy.List()
	if err != nil {
		return 0, fmt.Errorf("listing legacy locks to import: %w", err)
	}
	for _, lock := range locks {
		if err := a.copyLock(ctx, lock); err != nil {
			return 0, a.wrap("import legacy lock", err)
		}
	}
	applyLock, err := a.legacy.CheckCommandLock(command.Apply)
	if err != nil {
		return 0, fmt.Errorf("reading legacy global apply lock to import: %w", err)
	}
	if applyLock != nil {
		if _, err := a.backend.LockCommand(ctx, command.Apply, applyLock.LockTime()); err != nil {
			return 0, a.wrap("import global apply lock", err)
		}
	}
	return len(locks), nil
}

func (a *Adapter) remember(c pendingChange) {
	a.pendingMu.Lock()
	defer a.pendingMu.Unlock()
	a.pending = append(a.pending, c)
}

// mirror copies an acquired lock into the legacy database. A failure leaves
// the lock valid: only a later rollback would miss it, so it is reported and
// the request still succeeds.
func (a *Adapter) mirror(lock models.ProjectLock, write func() error) {
	if err := write(); err != nil {
		a.mirrorFailed(&lock, err)
	}
}

func (a *Adapter) mirrorFailed(lock *models.ProjectLock, err error) {
	a.metrics.mirrorFailures.Inc(1)
	a.opts.Logger.Warn("enhanced locking: could not copy a lock change into the legacy database (a rollback with --enhanced-locking-enabled=false would miss it): %v", err)
	a.opts.Events.Publish(Event{Type: EventMirrorFailed, Time: time.Now(), Lock: lock, Err: err})
}

// wrap turns an unreachable backend into the message an Atlantis user sees in
// the pull request.
func (a *Adapter) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrBackendUnavailable) {
		return fmt.Errorf("enhanced locking could not %s: %s is unreachable, so no lock was granted; retry once it is back, or ask an operator to check it: %w", op, a.opts.BackendName, err)
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
