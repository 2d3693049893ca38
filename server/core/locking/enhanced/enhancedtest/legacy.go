package enhancedtest

import (
	"context"
	"time"

	"github.com/runatlantis/atlantis/server/core/db"
	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// LegacyBackend presents an upstream db.Database as a Backend, unchanged, so
// the conformance suite can run upstream's own databases as references. It
// does not wait: TryLockWithTimeout is TryLock.
func LegacyBackend(database db.Database) enhanced.Backend {
	return legacyBackend{database}
}

type legacyBackend struct {
	db db.Database
}

func (l legacyBackend) TryLock(_ context.Context, req enhanced.LockRequest) (bool, models.ProjectLock, error) {
	return l.db.TryLock(req.Lock)
}

func (l legacyBackend) TryLockWithTimeout(_ context.Context, req enhanced.LockRequest, _ time.Duration) (bool, models.ProjectLock, error) {
	return l.db.TryLock(req.Lock)
}

func (l legacyBackend) Unlock(_ context.Context, project models.Project, workspace string) (*models.ProjectLock, error) {
	return l.db.Unlock(project, workspace)
}

func (l legacyBackend) UnlockIfOwnedByPull(_ context.Context, project models.Project, workspace string, pullNum int) (*models.ProjectLock, error) {
	return l.db.UnlockIfOwnedByPull(project, workspace, pullNum)
}

func (l legacyBackend) GetLock(_ context.Context, project models.Project, workspace string) (*models.ProjectLock, error) {
	return l.db.GetLock(project, workspace)
}

func (l legacyBackend) List(_ context.Context) ([]models.ProjectLock, error) {
	return l.db.List()
}

func (l legacyBackend) UnlockByPull(_ context.Context, repoFullName string, pullNum int) ([]models.ProjectLock, error) {
	return l.db.UnlockByPull(repoFullName, pullNum)
}

func (l legacyBackend) LockCommand(_ context.Context, cmdName command.Name, lockTime time.Time) (*command.Lock, error) {
	return l.db.LockCommand(cmdName, lockTime)
}

func (l legacyBackend) UnlockCommand(_ context.Context, cmdName command.Name) error {
	return l.db.UnlockCommand(cmdName)
}

func (l legacyBackend) CheckCommandLock(_ context.Context, cmdName command.Name) (*command.Lock, error) {
	return l.db.CheckCommandLock(cmdName)
}

func (l legacyBackend) Ping(_ context.Context) error {
	return l.db.Ping()
}

func (l legacyBackend) Close() error {
	return l.db.Close()
}
