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
	bolt "go.etcd.io/bbolt"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/legacydb"
)

// BoltDB is the enhanced backend for a single Atlantis replica. It keeps
// locks in the database the upstream server already opened (atlantis.db is
// held with a file lock, so it cannot be opened twice), adds priority waits
// in process, and, once OpenQueues opened a queue file of its own, durable
// queues with an outbox of notices (boltdb_queue.go, boltdb_outbox.go).
//
// It is safe for one replica only: the waiters and the mutex that makes an
// unlock and its handoff one step live in this process. It reaches the
// database only through the guard every enhanced component shares, which
// keeps upstream's BoltDB reads from racing its writes.
type BoltDB struct {
	legacy *legacydb.Guarded
	logger logging.SimpleLogging

	// mu serialises every lock change made through this backend and every
	// use of the queue file, so that an unlock and the handoff of the lock to
	// the next waiter or entry happen as one step for every other caller:
	// nobody can take the lock in between.
	mu     sync.Mutex
	queues map[string]*localQueue
	seq    uint64
	// qdb is the queue file, nil until OpenQueues and after Close.
	qdb     *bolt.DB
	qdbPath string

	// closing, under mu, refuses new waits once Close began; waits tracks
	// the waits in flight, which Close ends before it closes the queue file
	// their handoffs may still write.
	closing   bool
	waits     sync.WaitGroup
	closed    chan struct{}
	closeOnce sync.Once

	// watchers, under mu, are signalled when a notice is written
	// (WatchNotices).
	watchers map[chan struct{}]struct{}
}

var _ enhanced.Backend = (*BoltDB)(nil)

// NewBoltDB returns a backend over legacy, which stays open and owned by the
// upstream server: Close does not close it.
func NewBoltDB(legacy *legacydb.Guarded, logger logging.SimpleLogging) *BoltDB {
	if logger == nil {
		logger = enhanced.NopLogger{}
	}
	return &BoltDB{
		legacy:   legacy,
		logger:   logger,
		queues:   map[string]*localQueue{},
		closed:   make(chan struct{}),
		watchers: map[chan struct{}]struct{}{},
	}
}

func (b *BoltDB) TryLock(_ context.Context, req enhanced.LockRequest) (bool, models.ProjectLock, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.tryLockLocked(req.Lock)
}

// tryLockLocked reports a lock the same pull holds as acquired, which
// upstream's database leaves to its caller. A pull that holds the lock no
// longer waits for it: its durable entry leaves the queue (a failure there
// is the sweep's to repair, never the caller's). b.mu must be held.
func (b *BoltDB) tryLockLocked(lock models.ProjectLock) (bool, models.ProjectLock, error) {
	acquired, curr, err := b.legacy.TryLock(lock)
	if err != nil {
		return false, curr, err
	}
	if !acquired && samePull(curr, lock) {
		acquired = true
	}
	if acquired {
		if _, err := b.settleLocked(curr); err != nil {
			b.logger.Warn("%s", err)
		}
		if err := b.takenByPullLocked(models.GenerateLockKey(curr.Project, curr.Workspace), curr); err != nil {
			b.logger.Warn("%s", err)
		}
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
	if b.closing {
		b.mu.Unlock()
		return false, curr, errClosed
	}
	b.waits.Add(1)
	defer b.waits.Done()
	key := models.GenerateLockKey(req.Lock.Project, req.Lock.Workspace)
	b.seq++
	now := time.Now()
	w := &localWaiter{
		lock: req.Lock, priority: req.Priority, arrived: now, deadline: now.Add(timeout),
		score: now.Add(-req.Headstart), seq: b.seq, granted: make(chan models.ProjectLock, 1),
	}
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
// and hands it to the first of its queue. The holder's own durable entry, if
// a crash left one, leaves first (boltdb_settle.go), so the lock is never
// handed back to the pull that gives it up. b.mu must be held.
func (b *BoltDB) unlockLocked(project models.Project, workspace string, pullNum *int) (*models.ProjectLock, error) {
	key := models.GenerateLockKey(project, workspace)
	if b.qdb != nil {
		holder, err := b.legacy.GetLock(project, workspace)
		if err != nil {
			return nil, fmt.Errorf("reading lock %q: %w", key, err)
		}
		if holder != nil && (pullNum == nil || holder.Pull.Num == *pullNum) {
			if _, err := b.settleLocked(*holder); err != nil {
				b.logger.Warn("%s", err)
			}
		}
	}
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
	// Released: a failed hand-over is reported, not returned, and the next
	// sweep finishes it.
	if _, err := b.handoffLocked(key); err != nil {
		b.logger.Warn("%s", err)
	}
	return old, nil
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

// Close ends pending waits, then closes the queue file. The legacy database
// stays open for the upstream server, which owns it.
func (b *BoltDB) Close() error {
	b.mu.Lock()
	b.closing = true
	b.mu.Unlock()
	b.closeOnce.Do(func() { close(b.closed) })
	b.waits.Wait()
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closeQueuesLocked()
}
