package enhanced

import (
	"context"
	"fmt"
	"time"

	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"
)

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
		if a.opts.SeparateLegacyLocks {
			a.mirrorLock(current)
		}
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
		if err := a.copyCommandLock(ctx, command.Apply, applyLock.LockTime()); err != nil {
			return 0, a.wrap("import global apply lock", err)
		}
	}
	return len(locks), nil
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

// mirrorLock copies a lock the backend granted into the legacy database. The
// backend is the truth: a different holder in the legacy copy is stale (its
// release there has not landed yet, or a fallback conflict left it) and is
// replaced. A failure leaves the lock valid, since only a later rollback
// would miss it, so it is reported and the request still succeeds.
func (a *Adapter) mirrorLock(lock models.ProjectLock) {
	acquired, current, err := a.legacy.TryLock(lock)
	if err == nil && !acquired && current.Pull.Num != lock.Pull.Num {
		if _, err = a.legacy.UnlockIfOwnedByPull(lock.Project, lock.Workspace, current.Pull.Num); err == nil {
			acquired, current, err = a.legacy.TryLock(lock)
		}
		if err == nil && !acquired && current.Pull.Num != lock.Pull.Num {
			err = fmt.Errorf("the legacy database has %s held by pull #%d", models.GenerateLockKey(lock.Project, lock.Workspace), current.Pull.Num)
		}
	}
	if err != nil {
		a.mirrorFailed(&lock, err)
	}
}

// mirrorCommandLock and mirrorCommandUnlock copy the global apply lock into
// the legacy database, which refuses to lock what is locked and to unlock
// what is not: look first.
func (a *Adapter) mirrorCommandLock(cmdName command.Name, lockTime time.Time) {
	current, err := a.legacy.CheckCommandLock(cmdName)
	if err == nil && (current == nil || !current.IsLocked()) {
		_, err = a.legacy.LockCommand(cmdName, lockTime)
	}
	if err != nil {
		a.mirrorFailed(nil, err)
	}
}

func (a *Adapter) mirrorCommandUnlock(cmdName command.Name) {
	current, err := a.legacy.CheckCommandLock(cmdName)
	if err == nil && current != nil && current.IsLocked() {
		err = a.legacy.UnlockCommand(cmdName)
	}
	if err != nil {
		a.mirrorFailed(nil, err)
	}
}

func (a *Adapter) mirrorFailed(lock *models.ProjectLock, err error) {
	a.metrics.mirrorFailures.Inc(1)
	a.opts.Logger.Warn("enhanced locking: could not copy a lock change into the legacy database (a rollback with --enhanced-locking-enabled=false would miss it): %v", err)
	a.opts.Events.Publish(Event{Type: EventMirrorFailed, Time: time.Now(), Lock: lock, Err: err})
}

// legacyUnlockByPull releases the pull's locks in the legacy database one by
// one: upstream's UnlockByPull matches the repo name as a key prefix, so for
// org/repo it would also release that pull number's locks in org/repo-two.
func (a *Adapter) legacyUnlockByPull(repoFullName string, pullNum int) ([]models.ProjectLock, error) {
	all, err := a.legacy.List()
	if err != nil {
		return nil, err
	}
	var released []models.ProjectLock
	for _, l := range all {
		if l.Project.RepoFullName != repoFullName || l.Pull.Num != pullNum {
			continue
		}
		lock, err := a.legacy.UnlockIfOwnedByPull(l.Project, l.Workspace, pullNum)
		if err != nil {
			return released, err
		}
		if lock != nil {
			released = append(released, *lock)
		}
	}
	return released, nil
}
