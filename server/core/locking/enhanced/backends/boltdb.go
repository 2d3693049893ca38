package backends

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/legacydb"
)

// BoltDB is the enhanced backend for a single Atlantis replica. It keeps
// locks in the database the upstream server already opened (atlantis.db is
// held with a file lock, so it cannot be opened twice) and adds priority
// waits in process.
//
// It is safe for one replica only: the waiters and the mutex that makes an
// unlock and its handoff one step live in this process. It reaches the
// database only through the guard every enhanced component shares, which
// keeps upstream's BoltDB reads from racing its writes.
type BoltDB struct {
	legacy *legacydb.Guarded
	logger logging.SimpleLogging

	// mu serialises every lock change made through this backend, so that an
	// unlock and the handoff of the lock to the next waiter happen as one step
	// for every other caller: nobody can take the lock in between.
	mu     sync.Mutex
	queues map[string]*localQueue
	seq    uint64

	closed    chan struct{}
	closeOnce sync.Once
}

var _ enhanced.Backend = (*BoltDB)(nil)

// NewBoltDB returns a backend over legacy, which stays open and owned by the
// upstream server: Close does not close it.
func NewBoltDB(legacy *legacydb.Guarded, logger logging.SimpleLogging) *BoltDB {
	if logger == nil {
		logger = enhanced.NopLogger{}
	}
	return &BoltDB{
		legacy: legacy,
		logger: logger,
		queues: map[string]*localQueue{},
		closed: make(chan struct{}),
	}
}

func (b *BoltDB) TryLock(_ context.Context, req enhanced.LockRequest) (bool, models.ProjectLock, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.tryLockLocked(req.Lock)
}

// tryLockLocked reports a lock the same pull holds as acquired, which
// upstream's database leaves to its caller. b.mu must be held.
func (b *BoltDB) tryLockLocked(lock models.ProjectLock) (bool, models.ProjectLock, error) {
	acquired, curr, err := b.legacy.TryLock(lock)
	if err != nil {
		return false, curr, err
	}
	if !acquired && baseRepo(curr) == baseRepo(lock) && curr.Pull.Num == lock.Pull.Num {
		return true, curr, nil
	}
	return acquired, curr, nil
}

// TryLockWithTimeout is TryLock that, when another pull holds the lock, waits
// for it in this process: by priority, then arrival.
func (b *BoltDB) TryLockWithTimeout(ctx context.Context, req enhanced.LockRequest, timeout time.Duration) (bool, models.ProjectLock, error) {
	b.mu.Lock()
	acquired, curr, err := b.tryLockLocked(req.Lock)
	if err != nil || acquired || timeout <= 0 {
		b.mu.Unlock()
		return acquired, curr, err
	}
	key := models.GenerateLockKey(req.Lock.Project, req.Lock.Workspace)
	b.seq++
	w := &localWaiter{lock: req.Lock, score: time.Now().Add(-req.Headstart), seq: b.seq, granted: make(chan models.ProjectLock, 1)}
	b.queue(key).push(w)
	b.mu.Unlock()

	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	var done error
	select {
	case lock := <-w.granted:
		return true, lock, nil
	case <-deadline.C:
	case <-ctx.Done():
		done = ctx.Err()
	case <-b.closed:
		done = errClosed
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	if !w.handed {
		b.queue(key).remove(w)
		b.dropEmpty(key)
		return false, curr, done
	}
	// Handed over after the wait ended: keep it on a timeout, which is a
	// success in the nick of time, or pass it on when the caller is gone.
	lock := <-w.granted
	if done == nil {
		return true, lock, nil
	}
	if _, err := b.unlockLocked(lock.Project, lock.Workspace, nil); err != nil {
		b.logger.Warn("passing on lock %q after a cancelled wait: %s", key, err)
	}
	return false, curr, done
}

func (b *BoltDB) Unlock(_ context.Context, project models.Project, workspace string) (*models.ProjectLock, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.unlockLocked(project, workspace, nil)
}

func (b *BoltDB) UnlockIfOwnedByPull(_ context.Context, project models.Project, workspace string, pullNum int) (*models.ProjectLock, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.unlockLocked(project, workspace, &pullNum)
}

// unlockLocked releases the lock (only if pull *pullNum holds it, when set)
// and hands it to the best waiter. b.mu must be held.
func (b *BoltDB) unlockLocked(project models.Project, workspace string, pullNum *int) (*models.ProjectLock, error) {
	var old *models.ProjectLock
	var err error
	if pullNum == nil {
		old, err = b.legacy.Unlock(project, workspace)
	} else {
		old, err = b.legacy.UnlockIfOwnedByPull(project, workspace, *pullNum)
	}
	if err != nil || old == nil {
		return old, err
	}
	b.handoffLocked(models.GenerateLockKey(project, workspace))
	return old, nil
}

// handoffLocked gives a just released lock to the best waiter. b.mu must be
// held.
func (b *BoltDB) handoffLocked(key string) {
	q := b.queues[key]
	if q == nil {
		return
	}
	defer b.dropEmpty(key)
	w := q.pop()
	if w == nil {
		return
	}
	acquired, _, err := b.legacy.TryLock(w.lock)
	if err != nil || !acquired {
		// Taken outside this backend, or the database failed: the waiter
		// keeps its place and its deadline.
		q.pushFront(w)
		if err != nil {
			b.logger.Warn("handing lock %q to the next waiter: %s", key, err)
		}
		return
	}
	w.handed = true
	w.granted <- w.lock
}

func (b *BoltDB) queue(key string) *localQueue {
	q, ok := b.queues[key]
	if !ok {
		q = &localQueue{}
		b.queues[key] = q
	}
	return q
}

func (b *BoltDB) dropEmpty(key string) {
	if q, ok := b.queues[key]; ok && len(*q) == 0 {
		delete(b.queues, key)
	}
}

// QueueLength is how many requests wait for the lock.
func (b *BoltDB) QueueLength(_ context.Context, project models.Project, workspace string) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if q, ok := b.queues[models.GenerateLockKey(project, workspace)]; ok {
		return len(*q), nil
	}
	return 0, nil
}

func (b *BoltDB) GetLock(_ context.Context, project models.Project, workspace string) (*models.ProjectLock, error) {
	return b.legacy.GetLock(project, workspace)
}

func (b *BoltDB) List(_ context.Context) ([]models.ProjectLock, error) {
	return b.legacy.List()
}

// UnlockByPull releases the locks pull pullNum holds in repoFullName exactly
// (legacydb.Guarded.UnlockByPull says why upstream's own would not), each
// handed to its next waiter.
func (b *BoltDB) UnlockByPull(_ context.Context, repoFullName string, pullNum int) ([]models.ProjectLock, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	all, err := b.legacy.List()
	if err != nil {
		return nil, err
	}
	var released []models.ProjectLock
	var errs []error
	for _, lock := range all {
		if lock.Project.RepoFullName != repoFullName || lock.Pull.Num != pullNum {
			continue
		}
		old, err := b.unlockLocked(lock.Project, lock.Workspace, &pullNum)
		if err != nil {
			errs = append(errs, fmt.Errorf("unlocking %s: %w", models.GenerateLockKey(lock.Project, lock.Workspace), err))
			continue
		}
		if old != nil {
			released = append(released, *old)
		}
	}
	return released, errors.Join(errs...)
}

func (b *BoltDB) LockCommand(_ context.Context, cmdName command.Name, lockTime time.Time) (*command.Lock, error) {
	return b.legacy.LockCommand(cmdName, lockTime)
}

func (b *BoltDB) UnlockCommand(_ context.Context, cmdName command.Name) error {
	return b.legacy.UnlockCommand(cmdName)
}

func (b *BoltDB) CheckCommandLock(_ context.Context, cmdName command.Name) (*command.Lock, error) {
	return b.legacy.CheckCommandLock(cmdName)
}

func (b *BoltDB) Ping(_ context.Context) error {
	return b.legacy.Ping()
}

// Close ends pending waits. The legacy database stays open for the upstream
// server, which owns it.
func (b *BoltDB) Close() error {
	b.closeOnce.Do(func() { close(b.closed) })
	return nil
}
