package backends

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
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
// read below merges the two into the lock's line.
//
// A pull has one place in the line: a waiter of a pull that has an
// unexpired entry for the lock (a queued pull planning again) waits through
// that entry, whose hand-over it takes, so the line lists the entry alone.
// An expired entry waits for nothing: the line leaves it out until the next
// release or sweep removes it, and the pull's next Enqueue replaces it.

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

// ofPull is the first waiter of lock's pull, or nil.
func (q *localQueue) ofPull(lock models.ProjectLock) *localWaiter {
	if q == nil {
		return nil
	}
	for _, w := range *q {
		if samePull(w.lock, lock) {
			return w
		}
	}
	return nil
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
		now := time.Now().Round(0)
		if e != nil && e.expired(now) {
			// Expired, not yet swept: this request replaces it, a new
			// arrival. It leaves without an expiry notice, whose comment
			// would tell the pull to plan again as it just did, beside the
			// comment of its new place.
			if err := deleteEntry(tx, e); err != nil {
				return err
			}
			e = nil
		}
		if e == nil {
			seq, err := tx.Bucket(entriesBucket).NextSequence()
			if err != nil {
				return err
			}
			e = &storedEntry{
				key:   entryKey(key, now.UnixMicro()-req.Headstart.Microseconds(), seq),
				Token: newToken(), Lock: req.Lock, Priority: req.Priority, Enqueued: now, Expires: now.Add(req.Timeout),
			}
			if err := putEntry(tx, e); err != nil {
				return err
			}
			res.Joined = true
		}
		res.Entry = e.entry(b.positionLocked(tx, e, now))
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

// positionLocked is the place in its lock's line of e, which waits: the
// members of the line ahead of it, plus one. It walks the expiries of the
// entries ahead, which share their keys, O(position). b.mu must be held.
func (b *BoltDB) positionLocked(tx *bolt.Tx, e *storedEntry, now time.Time) int {
	position := 1
	for _, w := range b.localWaiters(e.lockKey()) {
		if w.before(e) && !b.waitsThroughEntry(tx, w, now) {
			position++
		}
	}
	c := tx.Bucket(expiriesBucket).Cursor()
	for k, v := c.Seek(entryPrefix(e.lockKey())); k != nil && bytes.Compare(k, e.key) < 0; k, v = c.Next() {
		if decodeScore(v) >= now.UnixMicro() {
			position++
		}
	}
	return position
}

// waitsThroughEntry says whether w's pull has an entry for w's lock that
// has not expired, through which w waits.
func (b *BoltDB) waitsThroughEntry(tx *bolt.Tx, w *localWaiter, now time.Time) bool {
	ek := tx.Bucket(pullsBucket).Get(pullKeyOf(w.lock))
	return ek != nil && tx.Bucket(entriesBucket).Get(ek) != nil && waitsAt(tx, ek, now)
}

func (b *BoltDB) localWaiters(key string) localQueue {
	if q := b.queues[key]; q != nil {
		return *q
	}
	return nil
}

// lineLocked is a lock's line, head first: its waiters in this process and
// its durable entries, in one order, without the expired entries and the
// waiters that wait through their pull's entry. b.mu must be held.
func (b *BoltDB) lineLocked(key string, all []*storedEntry, now time.Time) []enhanced.QueueEntry {
	durable := make([]*storedEntry, 0, len(all))
	queued := map[string]bool{}
	for _, e := range all {
		if !e.expired(now) {
			durable = append(durable, e)
			queued[pullID(baseRepo(e.Lock), e.Lock.Pull.Num)] = true
		}
	}
	var local localQueue
	for _, w := range b.localWaiters(key) {
		if !queued[pullID(baseRepo(w.lock), w.lock.Pull.Num)] {
			local = append(local, w)
		}
	}
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
	existed := tx.Bucket(entriesBucket).Get(ek) != nil
	if err := dropEntryKey(tx, ek); err != nil {
		return false, err
	}
	return existed, pulls.Delete(bytes.Clone(pk))
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
		// Every entry leaves, the expired ones too, which were not waiting.
		prefix := pullPrefix(repoFullName, pullNum)
		var keys [][]byte
		c := tx.Bucket(pullsBucket).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			keys = append(keys, bytes.Clone(k))
		}
		for _, pk := range keys {
			if _, err := leaveQueue(tx, pk); err != nil {
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

// pullEntriesLocked reads the pull's entries that wait, in lock key order,
// each with its position. b.mu must be held.
func (b *BoltDB) pullEntriesLocked(tx *bolt.Tx, repoFullName string, pullNum int) ([]enhanced.QueueEntry, error) {
	prefix := pullPrefix(repoFullName, pullNum)
	now := time.Now()
	var out []enhanced.QueueEntry
	c := tx.Bucket(pullsBucket).Cursor()
	for k, ek := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, ek = c.Next() {
		e, err := getEntry(tx, ek)
		if err != nil {
			return nil, err
		}
		if e != nil && !e.expired(now) {
			out = append(out, e.entry(b.positionLocked(tx, e, now)))
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
		q.Entries = b.lineLocked(key, durable, time.Now())
		if q.Holder, err = b.legacy.GetLock(project, workspace); err != nil {
			return err
		}
		q.HolderID = holderID(tx, key, q.Holder)
		return nil
	})
	if err != nil {
		return enhanced.LockQueue{}, queueErr(fmt.Sprintf("reading the queue of lock %q", key), err)
	}
	return q, nil
}

// Queues implements enhanced.QueueBackend: the locks with durable entries
// that wait, in lock key order.
func (b *BoltDB) Queues(_ context.Context) ([]enhanced.LockQueue, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	var out []enhanced.LockQueue
	err := b.viewLocked(func(tx *bolt.Tx) error {
		for _, key := range queuedLockKeys(tx) {
			durable, err := lockEntries(tx, key)
			if err != nil {
				return err
			}
			line := b.lineLocked(key, durable, now)
			if !slices.ContainsFunc(line, func(e enhanced.QueueEntry) bool { return !e.Synchronous }) {
				continue
			}
			lock := durable[0].Lock
			holder, err := b.legacy.GetLock(lock.Project, lock.Workspace)
			if err != nil {
				return fmt.Errorf("reading lock %q: %w", key, err)
			}
			out = append(out, enhanced.LockQueue{Project: lock.Project, Workspace: lock.Workspace, Holder: holder,
				HolderID: holderID(tx, key, holder), Entries: line})
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
