package enhanced

import (
	"context"
	"fmt"
	"time"

	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/events"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/legacydb"
)

// ImportLegacyLocks copies every lock and the global apply lock from the
// legacy database into the backend, so enabling enhanced locking on an
// existing install keeps its locks. Copying a lock the same pull already holds
// changes nothing, so it is safe to run at every start.
//
// A replica's legacy database only sees the releases made through that
// replica, so with several replicas it keeps copies of locks another replica
// released. A copy the backend released at or after the copy's acquisition
// time is such a stale copy: it is not imported, and is removed from the
// legacy database, so neither this start nor a rollback brings it back. Every
// other lock is imported: one taken while enhanced locking was off lands in
// the backend, one the backend still holds for the same pull stays as it is,
// and one another pull holds there is reported, never overwritten.
func (a *Adapter) ImportLegacyLocks(ctx context.Context) (int, error) {
	locks, err := a.legacy.List()
	if err != nil {
		return 0, fmt.Errorf("listing legacy locks to import: %w", err)
	}
	released := make([]time.Time, len(locks))
	if history, ok := a.backend.(ReleaseHistory); ok && len(locks) > 0 {
		if released, err = history.LastReleased(ctx, locks); err != nil {
			return 0, a.wrap("import legacy lock", err)
		}
	}
	imported := 0
	for i, lock := range locks {
		if !released[i].IsZero() && !released[i].Before(lock.Time.Truncate(time.Microsecond)) {
			a.dropStaleCopy(lock, released[i])
			continue
		}
		if err := a.importLock(ctx, lock); err != nil {
			return 0, a.wrap("import legacy lock", err)
		}
		imported++
	}
	applyLock, err := a.legacy.CheckCommandLock(command.Apply)
	if err != nil {
		return 0, fmt.Errorf("reading legacy global apply lock to import: %w", err)
	}
	if applyLock != nil {
		if err := a.copyCommandLock(ctx, command.Apply, applyLock.LockTime()); err != nil {
			return 0, a.wrap("import global apply lock", err)
		}
	}
	return imported, nil
}

// importLock puts a lock from the legacy database into the backend, reporting
// a conflict if another pull holds it there.
func (a *Adapter) importLock(ctx context.Context, lock models.ProjectLock) error {
	acquired, current, err := a.backend.TryLock(ctx, LockRequest{Lock: lock, Priority: PriorityNormal})
	if err != nil {
		return err
	}
	if !acquired {
		a.conflict(lock, current)
	}
	return nil
}

// dropStaleCopy removes from the legacy database a copy of a lock the backend
// released after it was taken.
func (a *Adapter) dropStaleCopy(lock models.ProjectLock, released time.Time) {
	key := models.GenerateLockKey(lock.Project, lock.Workspace)
	if _, err := a.legacy.UnlockIfOwnedByPull(lock.Project, lock.Workspace, lock.Pull.Num); err != nil {
		a.mirrorFailed(&lock, err)
		return
	}
	a.opts.Logger.Info("enhanced locking: not importing %s held by pull #%d since %s: %s released it at %s; removed the stale copy from the legacy database",
		key, lock.Pull.Num, lock.Time.Format(time.RFC3339Nano), a.opts.BackendName, released.Format(time.RFC3339Nano))
}

// releaseCommandLock frees a command lock in the backend if it is taken
// there. The backend may have lost it meanwhile (a Redis restarted without
// persistence), and a replay that insisted would never finish.
func (a *Adapter) releaseCommandLock(ctx context.Context, cmdName command.Name) error {
	current, err := a.backend.CheckCommandLock(ctx, cmdName)
	if err != nil || current == nil || !current.IsLocked() {
		return err
	}
	return a.backend.UnlockCommand(ctx, cmdName)
}

// copyCommandLock takes a command lock in the backend unless it is already
// taken there: command locks have no owner, so either way it is locked.
func (a *Adapter) copyCommandLock(ctx context.Context, cmdName command.Name, lockTime time.Time) error {
	current, err := a.backend.CheckCommandLock(ctx, cmdName)
	if err != nil || (current != nil && current.IsLocked()) {
		return err
	}
	_, err = a.backend.LockCommand(ctx, cmdName, lockTime)
	return err
}

// Mirror changes: what the adapter enqueues on legacyMirror after the
// backend changed a lock, when the legacy database keeps locks of its own.
// Each is safe to make late: it brings the legacy copy to the state the
// backend was in when the change was enqueued.

// mirrorLock copies a lock the backend granted into the legacy database. The
// backend is the truth: a different holder in the legacy copy is stale (its
// release there has not landed yet, or a fallback conflict left it) and is
// replaced. A failure leaves the lock valid, since only a later rollback
// would miss it, so it is reported and the request still succeeds.
func (a *Adapter) mirrorLock(lock models.ProjectLock) {
	a.mirror.enqueue(copyLock(lock))
}

func copyLock(lock models.ProjectLock) mirrorChange {
	return func(legacy *legacydb.Guarded) (*models.ProjectLock, error) {
		acquired, current, err := legacy.TryLock(lock)
		if err == nil && !acquired && current.Pull.Num != lock.Pull.Num {
			if _, err = legacy.UnlockIfOwnedByPull(lock.Project, lock.Workspace, current.Pull.Num); err == nil {
				acquired, current, err = legacy.TryLock(lock)
			}
			if err == nil && !acquired && current.Pull.Num != lock.Pull.Num {
				err = fmt.Errorf("the legacy database has %s held by pull #%d", models.GenerateLockKey(lock.Project, lock.Workspace), current.Pull.Num)
			}
		}
		return &lock, err
	}
}

// mirrorUnlock copies a release into the legacy database: of whoever holds
// the lock there, or only of pull *pullNum.
func (a *Adapter) mirrorUnlock(project models.Project, workspace string, pullNum *int) {
	a.mirror.enqueue(func(legacy *legacydb.Guarded) (*models.ProjectLock, error) {
		var err error
		if pullNum == nil {
			_, err = legacy.Unlock(project, workspace)
		} else {
			_, err = legacy.UnlockIfOwnedByPull(project, workspace, *pullNum)
		}
		return nil, err
	})
}

// mirrorUnlockByPull releases the pull's locks in the legacy database,
// including any stray copy the backend never had.
func (a *Adapter) mirrorUnlockByPull(repoFullName string, pullNum int) {
	a.mirror.enqueue(func(legacy *legacydb.Guarded) (*models.ProjectLock, error) {
		_, err := legacy.UnlockByPull(repoFullName, pullNum)
		return nil, err
	})
}

// mirrorCommandLock and mirrorCommandUnlock copy the global apply lock into
// the legacy database.
func (a *Adapter) mirrorCommandLock(cmdName command.Name, lockTime time.Time) {
	a.mirror.enqueue(lockCommand(cmdName, lockTime))
}

func (a *Adapter) mirrorCommandUnlock(cmdName command.Name) {
	a.mirror.enqueue(unlockCommand(cmdName))
}

// lockCommand and unlockCommand make the legacy database's command lock
// taken or free. It refuses to lock what is locked and to unlock what is
// not: look first.
func lockCommand(cmdName command.Name, lockTime time.Time) mirrorChange {
	return func(legacy *legacydb.Guarded) (*models.ProjectLock, error) {
		current, err := legacy.CheckCommandLock(cmdName)
		if err == nil && (current == nil || !current.IsLocked()) {
			_, err = legacy.LockCommand(cmdName, lockTime)
		}
		return nil, err
	}
}

func unlockCommand(cmdName command.Name) mirrorChange {
	return func(legacy *legacydb.Guarded) (*models.ProjectLock, error) {
		current, err := legacy.CheckCommandLock(cmdName)
		if err == nil && current != nil && current.IsLocked() {
			err = legacy.UnlockCommand(cmdName)
		}
		return nil, err
	}
}

func (a *Adapter) mirrorFailed(lock *models.ProjectLock, err error) {
	a.opts.Logger.Warn("enhanced locking: could not copy a lock change into the legacy database (a rollback with --enhanced-locking-enabled=false would miss it): %v", err)
	a.opts.Events.Publish(events.Event{Type: events.EventMirrorFailed, Time: time.Now(), Lock: lock, Err: err})
}
