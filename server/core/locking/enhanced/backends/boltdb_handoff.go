package backends

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// handoffLocked gives a free lock to the first of its queue: the head of
// this process's waiters or the head of its durable entries, whichever
// sorts first. Durable entries whose time ran out are dropped on the way,
// each with its expired notice. It reports whether the lock was handed
// over. b.mu must be held, from the release on, so that nobody can take the
// lock in between.
//
// The lock is written before the queue file (see boltdb_settle.go): a
// durable entry is handed the lock by TryLock of the value it installs, and
// then leaves its queue with its notice by the rule that repairs a crash
// between the two writes.
func (b *BoltDB) handoffLocked(key string) (bool, error) {
	err := b.releasedLocked(key)
	head, herr := b.durableHeadLocked(key)
	// A queue file that failed still leaves the waiters here to serve.
	if herr != nil {
		err = errors.Join(err, fmt.Errorf("reading the queue of lock %q: %w", key, herr))
	}
	q := b.queues[key]
	w := q.head()
	switch {
	case head != nil && (w == nil || !w.before(head)):
		handed, herr := b.handToEntryLocked(key, head)
		return handed, errors.Join(err, herr)
	case w != nil:
		handed, herr := b.handToWaiterLocked(key, q)
		return handed, errors.Join(err, herr)
	}
	return false, err
}

// durableHeadLocked returns the first unexpired durable entry of a lock,
// or nil, after removing the expired ones ahead of it with their notices and
// the unreadable ones, which nobody could be served through. Without the
// queue file open there are none. b.mu must be held.
func (b *BoltDB) durableHeadLocked(key string) (*storedEntry, error) {
	if b.qdb == nil {
		return nil, nil
	}
	now := time.Now()
	var head *storedEntry
	var expired []*storedEntry
	var unreadable [][]byte
	err := b.qdb.View(func(tx *bolt.Tx) error {
		prefix := entryPrefix(key)
		c := tx.Bucket(entriesBucket).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			e, err := decodeEntry(k, v)
			if err != nil {
				b.logger.Err("dropping %s", err)
				unreadable = append(unreadable, bytes.Clone(k))
				continue
			}
			if !e.expired(now) {
				head = e
				return nil
			}
			expired = append(expired, e)
		}
		return nil
	})
	if err != nil || len(expired)+len(unreadable) == 0 {
		return head, err
	}
	err = b.qdb.Update(func(tx *bolt.Tx) error {
		for _, k := range unreadable {
			if err := tx.Bucket(entriesBucket).Delete(k); err != nil {
				return err
			}
		}
		return expireEntries(tx, expired, now)
	})
	if err == nil && len(expired) > 0 {
		b.announceLocked()
	}
	return head, err
}

// expireEntries removes entries whose time ran out, each with its notice.
func expireEntries(tx *bolt.Tx, expired []*storedEntry, now time.Time) error {
	for _, e := range expired {
		if err := deleteEntry(tx, e); err != nil {
			return err
		}
		if err := putNotice(tx, enhanced.NoticeExpired, e, now); err != nil {
			return err
		}
	}
	return nil
}

// handToEntryLocked gives the free lock to a durable entry. b.mu must be
// held.
//
// One hand-over serves one request. A waiter of the entry's pull (a queued
// pull planning again) waits through the entry: it takes the lock the
// entry is handed, in this same step, as a request of its own, so the
// entry's notice names a holding that no longer holds the lock and the
// queue worker does not re-plan what the waiter's plan runs. A crash
// between the notice and the waiter's record loses the waiter with the
// process, and the notice, naming the holding, re-plans.
func (b *BoltDB) handToEntryLocked(key string, e *storedEntry) (bool, error) {
	acquired, _, err := b.legacy.TryLock(e.Lock)
	if err != nil {
		return false, fmt.Errorf("handing lock %q to the queue entry of pull %d: %w", key, e.Lock.Pull.Num, err)
	}
	if !acquired {
		// Taken outside this backend: the entry keeps its place.
		return false, nil
	}
	// The entry's value now holds the lock: settling the holder removes the
	// entry and writes its transferred notice.
	if _, err := b.settleLocked(e.Lock); err != nil {
		return true, fmt.Errorf("lock %q handed to pull %d, its queue entry left for the next sweep: %w", key, e.Lock.Pull.Num, err)
	}
	q := b.queues[key]
	if w := q.ofPull(e.Lock); w != nil {
		q.remove(w)
		b.dropEmpty(key)
		w.handed = true
		w.granted <- e.Lock
		return true, b.takenByPullLocked(key, e.Lock)
	}
	return true, nil
}

// handToWaiterLocked gives the free lock to the first waiter of q. b.mu must
// be held.
func (b *BoltDB) handToWaiterLocked(key string, q *localQueue) (bool, error) {
	defer b.dropEmpty(key)
	w := q.pop()
	acquired, _, err := b.legacy.TryLock(w.lock)
	if err != nil || !acquired {
		// Taken outside this backend, or the database failed: the waiter
		// keeps its place and its deadline.
		q.pushFront(w)
		if err != nil {
			return false, fmt.Errorf("handing lock %q to the next waiter: %w", key, err)
		}
		return false, nil
	}
	w.handed = true
	w.granted <- w.lock
	if _, err := b.settleLocked(w.lock); err != nil {
		return true, err
	}
	return true, nil
}
