package backends

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	bolt "go.etcd.io/bbolt"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// Crash repair. A lock lives in atlantis.db and its queue in the queue
// file, which share no transaction, so the writes are ordered for a crash
// (or a failed write) at any point between them to leave a state that one
// of two rules repairs:
//
//   - A hand-over, or a pull taking a lock it queued for by TryLock or a
//     synchronous wait, writes the lock first and removes the entry second.
//     In between, a pull holds a lock and has an entry for it. Rule 1: a pull
//     that holds a lock does not wait for it; its entry leaves the queue, and
//     if the lock's stored value is the very value the entry installs (the
//     hand-over's write), the hand-over happened and the entry leaves with
//     its transferred notice, written once; otherwise the pull took the lock
//     itself and the entry leaves without one. The value carries the time
//     Atlantis stamped on the request, which is unique per request and plays
//     the part of the Redis backend's acquisition token.
//   - A release frees the lock first and hands it over second. In between, a
//     lock is free and has entries. Rule 2: a free lock with entries is handed
//     to its queue's head.
//
// Every path applies rule 1 right after a pull comes to hold a lock, and a
// release applies it to the holder before freeing the lock, so a holder
// never finds its own entry in the queue it releases to. Completing a
// hand-over is rule 1 applied to the entry's own value: the normal path and
// the repair are one. Sweep applies both rules to every queued lock, and so
// does OpenQueues before the server serves any request, which repairs what a
// crash left. Applying a rule again changes nothing: the entry is gone.
// Everything else (joining, leaving, expiring, notices) changes the queue
// file alone, in one transaction.

// settleLocked applies rule 1 to holder, which holds its lock (or held it
// until the release that calls this), and reports whether it wrote a
// transferred notice. Without the queue file open there is nothing to
// settle. b.mu must be held.
func (b *BoltDB) settleLocked(holder models.ProjectLock) (bool, error) {
	if b.qdb == nil {
		return false, nil
	}
	key := models.GenerateLockKey(holder.Project, holder.Workspace)
	// Read first: a holder almost never has an entry.
	var e *storedEntry
	err := b.qdb.View(func(tx *bolt.Tx) error {
		var err error
		e, err = pullEntry(tx, baseRepo(holder), holder.Pull.Num, key)
		return err
	})
	if err != nil || e == nil {
		return false, queueErr(fmt.Sprintf("settling the queue of lock %q", key), err)
	}
	transferred := sameHolding(e.Lock, holder)
	err = b.qdb.Update(func(tx *bolt.Tx) error {
		if err := deleteEntry(tx, e); err != nil {
			return err
		}
		if !transferred {
			return nil
		}
		if err := putHolding(tx, key, storedHolding{ID: e.Token, Lock: holder}); err != nil {
			return err
		}
		return putNotice(tx, enhanced.NoticeTransferred, e, time.Now())
	})
	if err == nil && transferred {
		b.announceLocked()
	}
	return transferred, queueErr(fmt.Sprintf("settling the queue of lock %q", key), err)
}

// sameHolding says whether two values of a lock are one request's: the
// same pull's, stamped at the same instant.
func sameHolding(a, b models.ProjectLock) bool {
	return samePull(a, b) && a.Time.Equal(b.Time) && a.User.Username == b.User.Username && a.Pull.HeadCommit == b.Pull.HeadCommit
}

// Sweep implements enhanced.QueueBackend.
func (b *BoltDB) Sweep(_ context.Context) (enhanced.SweepResult, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, err := b.queuesLocked(); err != nil {
		return enhanced.SweepResult{}, queueErr("sweeping the lock queues", err)
	}
	return b.sweepLocked()
}

// sweepLocked settles the holder of every queued lock (rule 1) before
// expiring anything, since an entry handed its lock just before a crash was
// served in time whatever the clock says now; then expires the entries whose
// time ran out, and hands every free queued lock to its head (rule 2). b.mu
// must be held and the queue file open.
func (b *BoltDB) sweepLocked() (enhanced.SweepResult, error) {
	var res enhanced.SweepResult
	locks, err := b.legacy.List()
	if err != nil {
		return res, fmt.Errorf("sweeping the lock queues: reading the locks: %w", err)
	}
	holders := make(map[string]models.ProjectLock, len(locks))
	for _, l := range locks {
		holders[models.GenerateLockKey(l.Project, l.Workspace)] = l
	}
	var keys []string
	if err := b.qdb.View(func(tx *bolt.Tx) error {
		keys = queuedLockKeys(tx)
		return nil
	}); err != nil {
		return res, fmt.Errorf("sweeping the lock queues: %w", err)
	}

	var errs []error
	for _, key := range keys {
		if holder, ok := holders[key]; ok {
			transferred, err := b.settleLocked(holder)
			errs = append(errs, err)
			if transferred {
				res.Transferred++
			}
		}
	}
	expired, err := b.expireLocked()
	res.Expired = expired
	errs = append(errs, err)
	for _, key := range keys {
		if _, held := holders[key]; held {
			continue
		}
		handed, err := b.handoffLocked(key)
		errs = append(errs, err)
		if handed {
			res.Transferred++
		}
	}
	errs = append(errs, b.qdb.View(func(tx *bolt.Tx) error {
		res.Depth = tx.Bucket(entriesBucket).Stats().KeyN
		return nil
	}))
	return res, errors.Join(errs...)
}

// expireLocked removes every entry whose time ran out, each with its
// notice, and drops entries that cannot be read, which no release could
// ever serve. b.mu must be held and the queue file open.
func (b *BoltDB) expireLocked() (int, error) {
	now := time.Now()
	var expired []*storedEntry
	var unreadable [][]byte
	err := b.qdb.View(func(tx *bolt.Tx) error {
		return tx.Bucket(entriesBucket).ForEach(func(k, v []byte) error {
			e, err := decodeEntry(k, v)
			switch {
			case err != nil:
				b.logger.Err("dropping %s", err)
				unreadable = append(unreadable, bytes.Clone(k))
			case e.expired(now):
				expired = append(expired, e)
			}
			return nil
		})
	})
	if err != nil || len(expired)+len(unreadable) == 0 {
		return 0, queueErr("expiring queue entries", err)
	}
	err = b.qdb.Update(func(tx *bolt.Tx) error {
		for _, k := range unreadable {
			if err := dropEntryKey(tx, k); err != nil {
				return err
			}
		}
		return expireEntries(tx, expired, now)
	})
	if err != nil {
		return 0, queueErr("expiring queue entries", err)
	}
	if len(expired) > 0 {
		b.announceLocked()
	}
	return len(expired), nil
}
