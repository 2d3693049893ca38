package backends

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	bolt "go.etcd.io/bbolt"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

var _ enhanced.QueueBackend = (*BoltDB)(nil)

// A lock's queue has two kinds of members that share one order: the
// synchronous waiters of this process (TryLockWithTimeout), in memory, and
// the durable entries, in the queue file (boltdb_queuefile.go). Both sort by
// arrival minus headstart, in microseconds; a tie goes to the durable entry.
// A release serves whichever head comes first (boltdb_handoff.go), and every
// read below merges the two, so a position counts both kinds.

// localWaiter is one TryLockWithTimeout call of the BoltDB backend.
type localWaiter struct {
	lock     models.ProjectLock
	priority enhanced.Priority
	arrived  time.Time
	deadline time.Time
	// score orders the queue: arrival minus headstart (see
	// enhanced.Priority.Headstart), then seq.
	score time.Time
	seq   uint64
	// granted receives the lock when it is handed over; buffered so the
	// handoff never blocks on a waiter that stopped listening.
	granted chan models.ProjectLock
	// handed is set, under the backend's mutex, when the lock is handed over.
	handed bool
}

// before says whether w is served before the durable entry e.
func (w *localWaiter) before(e *storedEntry) bool {
	return w.score.UnixMicro() < e.score()
}

func (w *localWaiter) entry(position int) enhanced.QueueEntry {
	return enhanced.QueueEntry{
		ID: "wait:" + strconv.FormatUint(w.seq, 10), Lock: w.lock, Priority: w.priority, Position: position,
		Enqueued: w.arrived, Expires: w.deadline, Synchronous: true,
	}
}

// localQueue holds the waiters for one lock, in the order of
// enhanced.Priority.Headstart.
type localQueue []*localWaiter

func (q *localQueue) push(w *localWaiter) {
	*q = append(*q, w)
	sort.SliceStable(*q, func(i, j int) bool {
		a, b := (*q)[i], (*q)[j]
		if !a.score.Equal(b.score) {
			return a.score.Before(b.score)
		}
		return a.seq < b.seq
	})
}

func (q *localQueue) pop() *localWaiter {
	if len(*q) == 0 {
		return nil
	}
	w := (*q)[0]
	*q = (*q)[1:]
	return w
}

// pushFront puts back a waiter that pop returned but could not be served.
func (q *localQueue) pushFront(w *localWaiter) {
	*q = append(localQueue{w}, *q...)
}

func (q *localQueue) remove(w *localWaiter) {
	for i, x := range *q {
		if x == w {
			*q = append((*q)[:i], (*q)[i+1:]...)
			return
		}
	}
}

// head is the first waiter, or nil.
func (q *localQueue) head() *localWaiter {
	if q == nil || len(*q) == 0 {
		return nil
	}
	return (*q)[0]
}

// Enqueue implements enhanced.QueueBackend.
func (b *BoltDB) Enqueue(_ context.Context, req enhanced.QueueRequest) (enhanced.EnqueueResult, error) {
	key := models.GenerateLockKey(req.Lock.Project, req.Lock.Workspace)
	what := fmt.Sprintf("queueing for lock %q", key)
	if req.Timeout <= 0 {
		return enhanced.EnqueueResult{}, fmt.Errorf("%s: the queue timeout must be positive, got %s", what, req.Timeout)
	}
	if err := errors.Join(checkKeyPart("lock key", key), checkKeyPart("repo name", baseRepo(req.Lock))); err != nil {
		return enhanced.EnqueueResult{}, queueErr(what, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	qdb, err := b.queuesLocked()
	if err != nil {
		return enhanced.EnqueueResult{}, queueErr(what, err)
	}
	holder, err := b.legacy.GetLock(req.Lock.Project, req.Lock.Workspace)
	if err != nil {
		return enhanced.EnqueueResult{}, queueErr(what, err)
	}
	if holder == nil || samePull(*holder, req.Lock) {
		return enhanced.EnqueueResult{Holder: holder}, nil
	}

	res := enhanced.EnqueueResult{Queued: true, Holder: holder}
	err = qdb.Update(func(tx *bolt.Tx) error {
		// Idempotent: a repeat finds the entry the first call made.
		e, err := pullEntry(tx, baseRepo(req.Lock), req.Lock.Pull.Num, key)
		if err != nil {
			return err
		}
		if e == nil {
			seq, err := tx.Bucket(entriesBucket).NextSequence()
			if err != nil {
				return err
			}
			now := time.Now().Round(0)
			e = &storedEntry{
				key:   entryKey(key, now.UnixMicro()-req.Headstart.Microseconds(), seq),
				Token: newToken(), Lock: req.Lock, Priority: req.Priority, Enqueued: now, Expires: now.Add(req.Timeout),
			}
			if err := putEntry(tx, e); err != nil {
				return err
			}
			res.Joined = true
		}
		res.Entry = e.entry(b.positionLocked(tx, e))
		return nil
	})
	if err != nil {
		return enhanced.EnqueueResult{}, queueErr(what, err)
	}
	return res, nil
}

// samePull says whether two locks are the same pull's.
func samePull(a, b models.ProjectLock) bool {
	return baseRepo(a) == baseRepo(b) && a.Pull.Num == b.Pull.Num
}

// positionLocked is e's place in its lock's queue, counting the waiters of
// this process ahead of it: O(position). b.mu must be held.
func (b *BoltDB) positionLocked(tx *bolt.Tx, e *storedEntry) int {
	position := 1
	for _, w := range b.localWaiters(e.lockKey()) {
		if w.before(e) {
			position++
		}
	}
	c := tx.Bucket(entriesBucket).Cursor()
	for k, _ := c.Seek(entryPrefix(e.lockKey())); k != nil && bytes.Compare(k, e.key) < 0; k, _ = c.Next() {
		position++
	}
	return position
}

func (b *BoltDB) localWaiters(key string) localQueue {
	if q := b.queues[key]; q != nil {
		return *q
	}
	return nil
}

// mergedLocked is a lock's whole queue, head first: its waiters in this
// process and its durable entries, in one order. b.mu must be held.
func (b *BoltDB) mergedLocked(key string, durable []*storedEntry) []enhanced.QueueEntry {
	local := b.localWaiters(key)
	out := make([]enhanced.QueueEntry, 0, len(local)+len(durable))
	for len(local) > 0 || len(durable) > 0 {
		if len(local) > 0 && (len(durable) == 0 || local[0].before(durable[0])) {
			out = append(out, local[0].entry(len(out)+1))
			local = local[1:]
		} else {
			out = append(out, durable[0].entry(len(out)+1))
			durable = durable[1:]
		}
	}
	return out
}

// LeaveQueue implements enhanced.QueueBackend.
func (b *BoltDB) LeaveQueue(_ context.Context, project models.Project, workspace string, repoFullName string, pullNum int) (bool, error) {
	key := models.GenerateLockKey(project, workspace)
	b.mu.Lock()
	defer b.mu.Unlock()
	qdb, err := b.queuesLocked()
	if err != nil {
		return false, queueErr(fmt.Sprintf("leaving the queue of lock %q", key), err)
	}
	var left bool
	err = qdb.Update(func(tx *bolt.Tx) error {
		var err error
		left, err = leaveQueue(tx, pullKey(repoFullName, pullNum, key))
		return err
	})
	return left, queueErr(fmt.Sprintf("leaving the queue of lock %q", key), err)
}

// leaveQueue removes the entry the pull index key pk points to, and pk,
// reporting whether there was an entry. It leaves no notice: the pull left
// by itself.
func leaveQueue(tx *bolt.Tx, pk []byte) (bool, error) {
	pulls := tx.Bucket(pullsBucket)
	ek := pulls.Get(pk)
	if ek == nil {
		return false, nil
	}
	entries := tx.Bucket(entriesBucket)
	existed := entries.Get(ek) != nil
	if err := entries.Delete(bytes.Clone(ek)); err != nil {
		return false, err
	}
	return existed, pulls.Delete(pk)
}

// LeaveQueues implements enhanced.QueueBackend.
func (b *BoltDB) LeaveQueues(_ context.Context, repoFullName string, pullNum int) ([]enhanced.QueueEntry, error) {
	what := fmt.Sprintf("leaving the queues of pull %s", pullID(repoFullName, pullNum))
	b.mu.Lock()
	defer b.mu.Unlock()
	qdb, err := b.queuesLocked()
	if err != nil {
		return nil, queueErr(what, err)
	}
	var entries []enhanced.QueueEntry
	err = qdb.Update(func(tx *bolt.Tx) error {
		var err error
		if entries, err = b.pullEntriesLocked(tx, repoFullName, pullNum); err != nil {
			return err
		}
		for _, e := range entries {
			if _, err := leaveQueue(tx, pullKey(repoFullName, pullNum, models.GenerateLockKey(e.Lock.Project, e.Lock.Workspace))); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, queueErr(what, err)
	}
	return entries, nil
}

// PullEntries implements enhanced.QueueBackend.
func (b *BoltDB) PullEntries(_ context.Context, repoFullName string, pullNum int) ([]enhanced.QueueEntry, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var entries []enhanced.QueueEntry
	err := b.viewLocked(func(tx *bolt.Tx) error {
		var err error
		entries, err = b.pullEntriesLocked(tx, repoFullName, pullNum)
		return err
	})
	return entries, queueErr(fmt.Sprintf("reading the queue entries of pull %s", pullID(repoFullName, pullNum)), err)
}

// pullEntriesLocked reads the pull's entries, in lock key order, each with
// its position. b.mu must be held.
func (b *BoltDB) pullEntriesLocked(tx *bolt.Tx, repoFullName string, pullNum int) ([]enhanced.QueueEntry, error) {
	prefix := pullPrefix(repoFullName, pullNum)
	var out []enhanced.QueueEntry
	c := tx.Bucket(pullsBucket).Cursor()
	for k, ek := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, ek = c.Next() {
		e, err := getEntry(tx, ek)
		if err != nil {
			return nil, err
		}
		if e != nil {
			out = append(out, e.entry(b.positionLocked(tx, e)))
		}
	}
	return out, nil
}

// Queue implements enhanced.QueueBackend.
func (b *BoltDB) Queue(_ context.Context, project models.Project, workspace string) (enhanced.LockQueue, error) {
	key := models.GenerateLockKey(project, workspace)
	b.mu.Lock()
	defer b.mu.Unlock()
	q := enhanced.LockQueue{Project: project, Workspace: workspace}
	err := b.viewLocked(func(tx *bolt.Tx) error {
		durable, err := lockEntries(tx, key)
		if err != nil {
			return err
		}
		q.Entries = b.mergedLocked(key, durable)
		q.Holder, err = b.legacy.GetLock(project, workspace)
		return err
	})
	if err != nil {
		return enhanced.LockQueue{}, queueErr(fmt.Sprintf("reading the queue of lock %q", key), err)
	}
	return q, nil
}

// Queues implements enhanced.QueueBackend: the locks with durable entries,
// in lock key order.
func (b *BoltDB) Queues(_ context.Context) ([]enhanced.LockQueue, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []enhanced.LockQueue
	err := b.viewLocked(func(tx *bolt.Tx) error {
		for _, key := range queuedLockKeys(tx) {
			durable, err := lockEntries(tx, key)
			if err != nil {
				return err
			}
			if len(durable) == 0 {
				continue // a key of no lock's layout (a damaged file): the sweep drops it
			}
			lock := durable[0].Lock
			holder, err := b.legacy.GetLock(lock.Project, lock.Workspace)
			if err != nil {
				return fmt.Errorf("reading lock %q: %w", key, err)
			}
			out = append(out, enhanced.LockQueue{Project: lock.Project, Workspace: lock.Workspace, Holder: holder, Entries: b.mergedLocked(key, durable)})
		}
		return nil
	})
	if err != nil {
		return nil, queueErr("reading the lock queues", err)
	}
	return out, nil
}

// QueueLength is how many requests wait for the lock: synchronous waiters
// and, once the queue file is open, durable entries.
func (b *BoltDB) QueueLength(_ context.Context, project models.Project, workspace string) (int, error) {
	key := models.GenerateLockKey(project, workspace)
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(b.localWaiters(key))
	if b.qdb == nil {
		return n, nil
	}
	err := b.qdb.View(func(tx *bolt.Tx) error {
		prefix := entryPrefix(key)
		c := tx.Bucket(entriesBucket).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			n++
		}
		return nil
	})
	return n, queueErr(fmt.Sprintf("counting the queue of lock %q", key), err)
}

// viewLocked runs fn in a read transaction of the queue file. b.mu must be
// held.
func (b *BoltDB) viewLocked(fn func(*bolt.Tx) error) error {
	qdb, err := b.queuesLocked()
	if err != nil {
		return err
	}
	return qdb.View(fn)
}
