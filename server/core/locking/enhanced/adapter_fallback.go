package enhanced

import (
	"context"
	"time"

	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/events"
)

// Fallback operations run with mu held for reading and fallbackMu held (see
// run). Each reads the legacy state, journals the lock it is about to change
// and the pulls it takes it from, then changes it: the journal is written
// first, so a crash never loses a change from the replay.

func (a *Adapter) fallbackTryLock(lock models.ProjectLock) (bool, models.ProjectLock, error) {
	holder, err := a.legacy.GetLock(lock.Project, lock.Workspace)
	if err != nil {
		return false, models.ProjectLock{}, err
	}
	if holder == nil {
		if err := a.journal.touchLock(lock.Project, lock.Workspace); err != nil {
			return false, models.ProjectLock{}, err
		}
	}
	return a.legacy.TryLock(lock)
}

// fallbackUnlock releases the lock if pull *pullNum holds it, or whoever
// holds it when pullNum is nil.
func (a *Adapter) fallbackUnlock(project models.Project, workspace string, pullNum *int) (*models.ProjectLock, error) {
	holder, err := a.legacy.GetLock(project, workspace)
	if err != nil || holder == nil || (pullNum != nil && holder.Pull.Num != *pullNum) {
		return nil, err
	}
	if err := a.journal.touchLock(project, workspace, holder.Pull.Num); err != nil {
		return nil, err
	}
	if pullNum == nil {
		return a.legacy.Unlock(project, workspace)
	}
	return a.legacy.UnlockIfOwnedByPull(project, workspace, *pullNum)
}

func (a *Adapter) fallbackUnlockByPull(repoFullName string, pullNum int) ([]models.ProjectLock, error) {
	all, err := a.legacy.List()
	if err != nil {
		return nil, err
	}
	for _, l := range all {
		if l.Project.RepoFullName == repoFullName && l.Pull.Num == pullNum {
			if err := a.journal.touchLock(l.Project, l.Workspace, pullNum); err != nil {
				return nil, err
			}
		}
	}
	return a.legacy.UnlockByPull(repoFullName, pullNum)
}

// grantedAfterFallingBack settles a lock the backend handed to a waiting
// request after the fallback began: the legacy database now decides. If it
// grants the lock too, both agree; if another pull took it here meanwhile,
// the request is refused, and the replay takes the backend's grant back.
func (a *Adapter) grantedAfterFallingBack(granted models.ProjectLock) (bool, models.ProjectLock, error) {
	if err := a.journal.touchLock(granted.Project, granted.Workspace, granted.Pull.Num); err != nil {
		return false, models.ProjectLock{}, err
	}
	acquired, current, err := a.legacy.TryLock(granted)
	if err != nil {
		return false, models.ProjectLock{}, err
	}
	if !acquired && samePull(&current, &granted) {
		acquired = true
	}
	return acquired, current, nil
}

// replay makes the backend hold every lock the fallback changed as the legacy
// database holds it now, then empties the journal. It compares states, so it
// can run again after a failure or a crash. A holder in the backend that the
// fallback did not take the lock from (another replica's, although the
// fallback is for one replica only) is kept and reported as a conflict, never
// overwritten. Called with mu held for writing.
func (a *Adapter) replay() error {
	a.fallbackMu.Lock()
	defer a.fallbackMu.Unlock()
	for _, e := range a.journal.pending() {
		err := a.call(func(ctx context.Context) error {
			if e.Command != nil {
				return a.replayCommandLock(ctx, *e.Command)
			}
			return a.replayLock(ctx, e)
		}, 0)
		if err != nil {
			return err
		}
	}
	return a.journal.clear()
}

func (a *Adapter) replayLock(ctx context.Context, e journalEntry) error {
	want, err := a.legacy.GetLock(e.Project, e.Workspace)
	if err != nil {
		return err
	}
	have, err := a.backend.GetLock(ctx, e.Project, e.Workspace)
	if err != nil {
		return err
	}
	if samePull(want, have) {
		return nil
	}
	if have != nil && !e.displaces(have.Pull.Num) {
		if want != nil {
			a.conflict(*want, *have)
		}
		return nil
	}
	if have != nil {
		if _, err := a.backend.UnlockIfOwnedByPull(ctx, e.Project, e.Workspace, have.Pull.Num); err != nil {
			return err
		}
	}
	if want == nil {
		return nil
	}
	acquired, current, err := a.backend.TryLock(ctx, LockRequest{Lock: *want, Priority: PriorityNormal})
	if err != nil {
		return err
	}
	if !acquired {
		a.conflict(*want, current)
	}
	return nil
}

// replayCommandLock makes the backend's command lock what the legacy
// database's is: command locks have no owner, so the fallback's word stands.
func (a *Adapter) replayCommandLock(ctx context.Context, cmdName command.Name) error {
	want, err := a.legacy.CheckCommandLock(cmdName)
	if err != nil {
		return err
	}
	if want != nil && want.IsLocked() {
		return a.copyCommandLock(ctx, cmdName, want.LockTime())
	}
	return a.releaseCommandLock(ctx, cmdName)
}

// conflict reports that lock, which the legacy database gave its pull, is
// held in the backend by another pull, which keeps it; the legacy copy is
// corrected to the backend's holder, so the two agree from now on.
func (a *Adapter) conflict(lock, current models.ProjectLock) {
	a.opts.Logger.Warn("enhanced locking: conflict for %s: the legacy database says pull #%d holds it but %s says pull #%d does; kept %s's, review pull #%d",
		models.GenerateLockKey(lock.Project, lock.Workspace), lock.Pull.Num, a.opts.BackendName, current.Pull.Num, a.opts.BackendName, lock.Pull.Num)
	a.opts.Events.Publish(events.Event{Type: events.EventLockConflict, Time: time.Now(), Lock: &lock, Current: &current})
	if a.opts.SeparateLegacyLocks {
		// At once: a replay reads the legacy database next.
		a.mirror.apply(copyLock(current))
	}
}

// samePull says whether two locks, either possibly absent, are held by the
// same pull (or both absent).
func samePull(x, y *models.ProjectLock) bool {
	if x == nil || y == nil {
		return x == nil && y == nil
	}
	return x.Pull.Num == y.Pull.Num && x.Pull.BaseRepo.FullName == y.Pull.BaseRepo.FullName
}
