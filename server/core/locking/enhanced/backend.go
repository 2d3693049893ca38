// Package enhanced is the enhanced locking system: backends that are safe for
// many Atlantis replicas, and the adapter that puts them behind upstream's
// db.Database.
package enhanced

import (
	"context"
	"time"

	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"
)

// Backend stores project locks and the global command locks.
//
// Its lock operations mean what upstream's db.Database lock operations mean, so
// the adapter can hand them over unchanged; every call takes a context because
// a backend may be remote. Implementations must keep one invariant under any
// interleaving of callers, processes and restarts: at most one holder per lock
// key (models.GenerateLockKey).
type Backend interface {
	// TryLock takes the lock if it is free or already held by the same pull.
	// It returns whether this call holds the lock and the lock now held.
	TryLock(ctx context.Context, req LockRequest) (bool, models.ProjectLock, error)
	// TryLockWithTimeout is TryLock that, when the lock is held by another
	// pull, waits until it is released to this request, timeout passes, or ctx
	// is done. Waiters are served by priority, then first come first served.
	TryLockWithTimeout(ctx context.Context, req LockRequest, timeout time.Duration) (bool, models.ProjectLock, error)
	Unlock(ctx context.Context, project models.Project, workspace string) (*models.ProjectLock, error)
	UnlockIfOwnedByPull(ctx context.Context, project models.Project, workspace string, pullNum int) (*models.ProjectLock, error)
	GetLock(ctx context.Context, project models.Project, workspace string) (*models.ProjectLock, error)
	List(ctx context.Context) ([]models.ProjectLock, error)
	UnlockByPull(ctx context.Context, repoFullName string, pullNum int) ([]models.ProjectLock, error)

	LockCommand(ctx context.Context, cmdName command.Name, lockTime time.Time) (*command.Lock, error)
	UnlockCommand(ctx context.Context, cmdName command.Name) error
	CheckCommandLock(ctx context.Context, cmdName command.Name) (*command.Lock, error)

	Ping(ctx context.Context) error
	Close() error
}

// ReleaseHistory is implemented by backends that remember when each lock was
// last released, so that a copy of a lock kept elsewhere (a replica's legacy
// database, which only sees the releases made through that replica) is not
// brought back after the backend released it.
type ReleaseHistory interface {
	// LastReleased returns, for each lock, when the lock on its project and
	// workspace was last released, or the zero time if never.
	LastReleased(ctx context.Context, locks []models.ProjectLock) ([]time.Time, error)
}

// LockRequest is one pull's request for one project lock.
type LockRequest struct {
	Lock     models.ProjectLock
	Priority Priority
	// Headstart places the request in a queue: it sorts by arrival minus
	// Headstart (Priority.Headstart), so zero is first come first served.
	Headstart time.Duration
}
