package enhanced

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/runatlantis/atlantis/server/core/db"
	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/events"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/legacydb"
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
	// database itself, or when the legacy database is upstream's Redis
	// database on the backend's own keys (where locks upstream replicas write
	// reach the backend's indexes as it sees them and by its background scan).
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
	// Queue, with a backend that keeps durable queues, puts the requests it
	// chooses that find a lock held by another pull in the lock's queue, and
	// takes closed and unlocked pulls out of every queue. nil queues nothing.
	Queue QueuePolicy
	// FallbackJournal records durably what a fallback changed, for the replay
	// to survive a crash; nil keeps it in memory.
	FallbackJournal *FallbackJournal
	// BackendUnavailable hears at once of every operation that found the
	// backend out of reach, so health reports do not wait for the next ping.
	BackendUnavailable func(error)
	// Fence stops lock changes and status writes for a pull whose command
	// lost its lease on this replica; nil fences nothing.
	Fence  PullFence
	Logger logging.SimpleLogging
	// Events hears of every lock request's answer, release, queueing and
	// backend switch; Publish is called on the lock path.
	Events events.Publisher
}

// Adapter is upstream's db.Database with lock operations served by an enhanced
// Backend. Pull status stays in the legacy database upstream created, so
// installing it changes where locks live and nothing else.
type Adapter struct {
	legacy  *legacydb.Guarded
	backend Backend
	opts    AdapterOptions

	// The mode. fallback is read without any lock (ActiveBackend behind
	// /healthz, a health report that changes nothing). mu is held for reading
	// by each lock operation while it acts (a backend call and its legacy
	// copy, or a fallback operation) and for writing while the mode changes,
	// so an operation runs entirely in one mode. A bounded wait holds it
	// before and after waiting, never while it waits, so a mode switch never
	// waits for a wait.
	mu       sync.RWMutex
	fallback atomic.Bool
	// fallbackMu serialises fallback operations, each of which reads the
	// legacy state, journals what it will change, then changes it.
	fallbackMu sync.Mutex
	journal    *FallbackJournal
	// mirror copies lock changes into the legacy database, when it keeps
	// locks of its own (SeparateLegacyLocks).
	mirror *legacyMirror
}

var _ db.Database = (*Adapter)(nil)

// NewAdapter returns an Adapter routing locks to backend and pull status to
// legacy, the guard every enhanced component reaches the legacy database
// through.
func NewAdapter(legacy *legacydb.Guarded, backend Backend, opts AdapterOptions) *Adapter {
	if opts.Events == nil {
		opts.Events = events.PublisherFunc(func(events.Event) {})
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
	if opts.BackendUnavailable == nil {
		opts.BackendUnavailable = func(error) {}
	}
	if opts.FallbackJournal == nil {
		opts.FallbackJournal, _ = OpenFallbackJournal("") // in memory: cannot fail
	}
	a := &Adapter{legacy: legacy, backend: backend, opts: opts, journal: opts.FallbackJournal}
	a.mirror = newLegacyMirror(legacy, a.mirrorFailed)
	return a
}

// ActiveBackend names where lock operations go right now. It takes no lock,
// so probes answer whatever the locking is doing.
func (a *Adapter) ActiveBackend() string {
	if a.fallback.Load() {
		return "legacy-fallback"
	}
	return a.opts.BackendName
}

// FallbackActive says whether lock operations go to the legacy database now.
// It takes no lock, as ActiveBackend.
func (a *Adapter) FallbackActive() bool {
	return a.fallback.Load()
}

// TryLock implements db.Database. With a wait timeout, a lock another pull
// holds is waited for outside the mode lock (see Adapter.mu).
func (a *Adapter) TryLock(lock models.ProjectLock) (bool, models.ProjectLock, error) {
	if err := a.fenced(lock.Pull.BaseRepo.FullName, lock.Pull.Num); err != nil {
		return false, models.ProjectLock{}, err
	}
	start := time.Now()
	acquired, current, err := a.tryLock(lock)
	a.publishAnswer(lock, start, acquired, current, err)
	if err != nil {
		return false, models.ProjectLock{}, a.wrap("lock", err)
	}
	return acquired, current, nil
}

func (a *Adapter) tryLock(lock models.ProjectLock) (bool, models.ProjectLock, error) {
	req := a.request(lock)
	acquired, current, byBackend, err := a.tryLockOnce(req)
	if err != nil || acquired || !byBackend {
		return acquired, current, err
	}
	if a.opts.WaitTimeout > 0 {
		if acquired, current, err = a.wait(req); err != nil || acquired {
			return acquired, current, err
		}
	}
	return a.enqueue(req, current)
}

// tryLockOnce asks once, in whichever mode holds, and says whether the
// backend answered.
func (a *Adapter) tryLockOnce(req LockRequest) (bool, models.ProjectLock, bool, error) {
	var acquired bool
	var current models.ProjectLock
	byBackend, err := a.run(func() error {
		err := a.call(func(ctx context.Context) error {
			var err error
			acquired, current, err = a.backend.TryLock(ctx, req)
			return err
		}, 0)
		if err == nil && acquired && a.opts.SeparateLegacyLocks {
			a.mirrorLock(current)
		}
		return err
	}, func() error {
		var err error
		acquired, current, err = a.fallbackTryLock(req.Lock)
		return err
	})
	return acquired, current, byBackend, err
}

// wait waits for a lock another pull holds, holding no mode lock meanwhile,
// then records a grant in whichever mode holds by then.
func (a *Adapter) wait(req LockRequest) (bool, models.ProjectLock, error) {
	var acquired bool
	var current models.ProjectLock
	err := a.call(func(ctx context.Context) error {
		var err error
		acquired, current, err = a.backend.TryLockWithTimeout(ctx, req, a.opts.WaitTimeout)
		return err
	}, a.opts.WaitTimeout)
	if errors.Is(err, ErrBackendUnavailable) {
		a.backendUnavailable(err)
		if a.opts.FallbackToLegacy {
			return a.tryLock(req.Lock)
		}
	}
	if err != nil || !acquired {
		return acquired, current, err
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	if !a.fallback.Load() {
		if a.opts.SeparateLegacyLocks {
			a.mirrorLock(current)
		}
		return true, current, nil
	}
	a.fallbackMu.Lock()
	defer a.fallbackMu.Unlock()
	return a.grantedAfterFallingBack(current)
}

// Unlock implements db.Database: one release by key in the backend. The
// backend repeats a call whose reply was lost under the same call id, which
// answers as the first run did, so a repeat never releases the pull the lock
// was handed to meanwhile. The legacy copy goes too, along with any stray
// copy the backend never had.
func (a *Adapter) Unlock(project models.Project, workspace string) (*models.ProjectLock, error) {
	var lock *models.ProjectLock
	_, err := a.run(func() error {
		err := a.call(func(ctx context.Context) error {
			var err error
			lock, err = a.backend.Unlock(ctx, project, workspace)
			return err
		}, 0)
		if err == nil && a.opts.SeparateLegacyLocks {
			a.mirrorUnlock(project, workspace, nil)
			a.mirrorHandOvers(lock)
		}
		return err
	}, func() error {
		var err error
		lock, err = a.fallbackUnlock(project, workspace, nil)
		return err
	})
	if err == nil {
		a.publishReleased(lock)
	}
	return lock, a.wrap("unlock", err)
}

// UnlockIfOwnedByPull implements db.Database.
func (a *Adapter) UnlockIfOwnedByPull(project models.Project, workspace string, pullNum int) (*models.ProjectLock, error) {
	if err := a.fenced(project.RepoFullName, pullNum); err != nil {
		return nil, err
	}
	var lock *models.ProjectLock
	_, err := a.run(func() error {
		err := a.call(func(ctx context.Context) error {
			var err error
			lock, err = a.backend.UnlockIfOwnedByPull(ctx, project, workspace, pullNum)
			return err
		}, 0)
		if err == nil && a.opts.SeparateLegacyLocks {
			a.mirrorUnlock(project, workspace, &pullNum)
			a.mirrorHandOvers(lock)
		}
		return err
	}, func() error {
		var err error
		lock, err = a.fallbackUnlock(project, workspace, &pullNum)
		return err
	})
	if err == nil {
		a.publishReleased(lock)
	}
	return lock, a.wrap("unlock", err)
}

// UnlockByPull implements db.Database. A pull that is closed or unlocked
// leaves every queue first, so none of its locks can be handed back to it.
func (a *Adapter) UnlockByPull(repoFullName string, pullNum int) ([]models.ProjectLock, error) {
	var locks []models.ProjectLock
	_, err := a.run(func() error {
		if err := a.leaveQueues(repoFullName, pullNum); err != nil {
			return err
		}
		err := a.call(func(ctx context.Context) error {
			var err error
			locks, err = a.backend.UnlockByPull(ctx, repoFullName, pullNum)
			return err
		}, 0)
		if err == nil && a.opts.SeparateLegacyLocks {
			a.mirrorUnlockByPull(repoFullName, pullNum)
			for i := range locks {
				a.mirrorHandOvers(&locks[i])
			}
		}
		return err
	}, func() error {
		var err error
		locks, err = a.fallbackUnlockByPull(repoFullName, pullNum)
		return err
	})
	for i := range locks {
		a.publishReleased(&locks[i])
	}
	return locks, a.wrap("unlock", err)
}

// GetLock implements db.Database.
func (a *Adapter) GetLock(project models.Project, workspace string) (*models.ProjectLock, error) {
	var lock *models.ProjectLock
	_, err := a.run(func() error {
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
	_, err := a.run(func() error {
		return a.call(func(ctx context.Context) error {
			var err error
			locks, err = a.backend.List(ctx)
			return err
		}, 0)
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
	_, err := a.run(func() error {
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
		if err := a.journal.touchCommand(cmdName); err != nil {
			return err
		}
		var err error
		lock, err = a.legacy.LockCommand(cmdName, lockTime)
		return err
	})
	return lock, a.wrap("lock command", err)
}

// UnlockCommand implements db.Database.
func (a *Adapter) UnlockCommand(cmdName command.Name) error {
	_, err := a.run(func() error {
		err := a.call(func(ctx context.Context) error {
			return a.backend.UnlockCommand(ctx, cmdName)
		}, 0)
		if err == nil && a.opts.SeparateLegacyLocks {
			a.mirrorCommandUnlock(cmdName)
		}
		return err
	}, func() error {
		if err := a.journal.touchCommand(cmdName); err != nil {
			return err
		}
		return a.legacy.UnlockCommand(cmdName)
	})
	return a.wrap("unlock command", err)
}

// CheckCommandLock implements db.Database.
func (a *Adapter) CheckCommandLock(cmdName command.Name) (*command.Lock, error) {
	var lock *command.Lock
	_, err := a.run(func() error {
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
	if err := a.fenced(pull.BaseRepo.FullName, pull.Num); err != nil {
		return err
	}
	return a.legacy.UpdateProjectStatus(pull, workspace, repoRelDir, newStatus)
}

// GetPullStatus implements db.Database; pull status stays legacy.
func (a *Adapter) GetPullStatus(pull models.PullRequest) (*models.PullStatus, error) {
	return a.legacy.GetPullStatus(pull)
}

// DeletePullStatus implements db.Database; pull status stays legacy. A plan
// deletes the status before it writes its own, so a fenced command must not
// delete the status its successor wrote.
func (a *Adapter) DeletePullStatus(pull models.PullRequest) error {
	if err := a.fenced(pull.BaseRepo.FullName, pull.Num); err != nil {
		return err
	}
	return a.legacy.DeletePullStatus(pull)
}

// UpdatePullWithResults implements db.Database; pull status stays legacy.
func (a *Adapter) UpdatePullWithResults(pull models.PullRequest, newResults []command.ProjectResult) (models.PullStatus, error) {
	if err := a.fenced(pull.BaseRepo.FullName, pull.Num); err != nil {
		return models.PullStatus{}, err
	}
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

// Flush returns once every lock change made so far is copied into the legacy
// database.
func (a *Adapter) Flush() {
	a.mirror.flush()
}

// Close copies the lock changes still on their way into the legacy database,
// then closes the backend and the fallback journal, whose entries stay on
// disk for the next start. The legacy database belongs to upstream's server,
// which closes it.
func (a *Adapter) Close() error {
	a.mirror.close()
	return errors.Join(a.backend.Close(), a.journal.Close())
}
