package enhanced

import (
	"sync"
	"time"

	"github.com/runatlantis/atlantis/server/core/db"
	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"
)

// serializedDatabase runs the legacy database's lock operations one at a time.
//
// Upstream's BoltDB List decodes values after its read transaction has ended,
// from memory a concurrent write may already have reused ("JSON decoder out
// of sync"). Upstream rarely lists while writing; the adapter does, in
// fallback and when mirroring, so it keeps its own calls apart. Pull-status
// calls pass straight through.
type serializedDatabase struct {
	db.Database
	mu sync.Mutex
}

func (s *serializedDatabase) TryLock(lock models.ProjectLock) (bool, models.ProjectLock, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Database.TryLock(lock)
}

func (s *serializedDatabase) Unlock(project models.Project, workspace string) (*models.ProjectLock, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Database.Unlock(project, workspace)
}

func (s *serializedDatabase) UnlockIfOwnedByPull(project models.Project, workspace string, pullNum int) (*models.ProjectLock, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Database.UnlockIfOwnedByPull(project, workspace, pullNum)
}

func (s *serializedDatabase) List() ([]models.ProjectLock, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Database.List()
}

func (s *serializedDatabase) GetLock(project models.Project, workspace string) (*models.ProjectLock, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Database.GetLock(project, workspace)
}

func (s *serializedDatabase) UnlockByPull(repoFullName string, pullNum int) ([]models.ProjectLock, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Database.UnlockByPull(repoFullName, pullNum)
}

func (s *serializedDatabase) LockCommand(cmdName command.Name, lockTime time.Time) (*command.Lock, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Database.LockCommand(cmdName, lockTime)
}

func (s *serializedDatabase) UnlockCommand(cmdName command.Name) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Database.UnlockCommand(cmdName)
}

func (s *serializedDatabase) CheckCommandLock(cmdName command.Name) (*command.Lock, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Database.CheckCommandLock(cmdName)
}
