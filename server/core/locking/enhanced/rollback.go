package enhanced

import (
	"context"
	"fmt"
	"time"

	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/legacydb"
)

// A rollback runs the replicas with enhanced locking off, on the legacy
// database alone. Two things make it lossless:
//
//   - While enhanced locking runs, every change it makes is copied into the
//     replica's legacy database in the background (legacyMirror), flushed at
//     shutdown. That covers what this replica did.
//   - When a replica starts with enhanced locking off and the enhanced Redis
//     answers, CopyForRollback makes its legacy database hold exactly what
//     Redis holds, which covers what other replicas did too. From then on the
//     legacy database is the truth, as a marker in it records; a later start
//     with enhanced locking off copies nothing, so a lock released while off
//     is never brought back from the frozen Redis.
//
// When enhanced locking comes back, TakeBackAfterRollback releases in the
// backend what the legacy database released meanwhile, and the import then
// brings in what it took meanwhile.

// CopyForRollback makes legacy hold the locks and the global apply lock of
// snapshot, replacing a different holder, and removes every other legacy
// lock the backend released at or after the lock's acquisition (a stale
// copy). It returns how many locks it copied and dropped.
func CopyForRollback(legacy *legacydb.Guarded, snapshot []models.ProjectLock, applyLocked bool, released func([]models.ProjectLock) ([]time.Time, error)) (int, int, error) {
	held := map[string]bool{}
	for _, lock := range snapshot {
		held[models.GenerateLockKey(lock.Project, lock.Workspace)] = true
		if _, err := copyLock(lock)(legacy); err != nil {
			return 0, 0, fmt.Errorf("copying %s into the legacy database: %w", models.GenerateLockKey(lock.Project, lock.Workspace), err)
		}
	}
	all, err := legacy.List()
	if err != nil {
		return 0, 0, fmt.Errorf("listing the legacy database's locks: %w", err)
	}
	var others []models.ProjectLock
	for _, lock := range all {
		if !held[models.GenerateLockKey(lock.Project, lock.Workspace)] {
			others = append(others, lock)
		}
	}
	dropped := 0
	if len(others) > 0 {
		times, err := released(others)
		if err != nil {
			return 0, 0, err
		}
		for i, lock := range others {
			if times[i].IsZero() || times[i].Before(lock.Time.Truncate(time.Microsecond)) {
				continue
			}
			if _, err := legacy.UnlockIfOwnedByPull(lock.Project, lock.Workspace, lock.Pull.Num); err != nil {
				return 0, 0, fmt.Errorf("removing the stale copy of %s: %w", models.GenerateLockKey(lock.Project, lock.Workspace), err)
			}
			dropped++
		}
	}
	var change mirrorChange
	if applyLocked {
		change = lockCommand(command.Apply, time.Now())
	} else {
		change = unlockCommand(command.Apply)
	}
	if _, err := change(legacy); err != nil {
		return 0, 0, fmt.Errorf("copying the global apply lock into the legacy database: %w", err)
	}
	return len(snapshot), dropped, nil
}

// TakeBackAfterRollback releases in the backend each lock of snapshot (what
// the backend held when a rollback began) that the legacy database, the truth
// while enhanced locking was off, no longer holds for the same pull, and the
// global apply lock likewise. Run it at start, before ImportLegacyLocks. It
// returns how many locks it released.
func (a *Adapter) TakeBackAfterRollback(ctx context.Context, snapshot []models.ProjectLock, applyLocked bool) (int, error) {
	released := 0
	for _, lock := range snapshot {
		now, err := a.legacy.GetLock(lock.Project, lock.Workspace)
		if err != nil {
			return released, fmt.Errorf("reading the legacy database's lock: %w", err)
		}
		if samePull(now, &lock) {
			continue
		}
		err = a.call(func(ctx context.Context) error {
			_, err := a.backend.UnlockIfOwnedByPull(ctx, lock.Project, lock.Workspace, lock.Pull.Num)
			return err
		}, 0)
		if err != nil {
			return released, a.wrap("unlock", err)
		}
		released++
	}
	legacyApply, err := a.legacy.CheckCommandLock(command.Apply)
	if err != nil {
		return released, fmt.Errorf("reading the legacy global apply lock: %w", err)
	}
	if applyLocked && (legacyApply == nil || !legacyApply.IsLocked()) {
		if err := a.call(func(ctx context.Context) error { return a.releaseCommandLock(ctx, command.Apply) }, 0); err != nil {
			return released, a.wrap("unlock command", err)
		}
	}
	return released, nil
}
