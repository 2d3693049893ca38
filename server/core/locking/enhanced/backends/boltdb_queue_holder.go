package backends

import (
	"encoding/json"
	"fmt"

	"github.com/runatlantis/atlantis/server/events/models"
	bolt "go.etcd.io/bbolt"
)

// Which acquisition holds a lock (enhanced.LockQueue.HolderID). atlantis.db
// keeps upstream's value, which a pull's own request taking a lock the pull
// holds leaves as it is, so the holders bucket of the queue file names the
// acquisition: the entry a hand-over served, until the pull takes the lock
// by a request of its own (its waiting plan, a TryLock), which gets an ID of
// its own. The queue worker re-plans a hand-over only while its entry holds
// the lock. A record names the holding whose value it keeps, and nobody once
// the lock's value is another (released, deleted outside the backend).

// storedHolding is a holders record.
type storedHolding struct {
	ID   string
	Lock models.ProjectLock
}

func getHolding(tx *bolt.Tx, key string) (*storedHolding, error) {
	v := tx.Bucket(holdersBucket).Get([]byte(key))
	if v == nil {
		return nil, nil
	}
	var h storedHolding
	if err := json.Unmarshal(v, &h); err != nil {
		return nil, corruptLockError(key, fmt.Errorf("holder record: %w", err))
	}
	return &h, nil
}

func putHolding(tx *bolt.Tx, key string, h storedHolding) error {
	v, err := json.Marshal(h)
	if err != nil {
		return fmt.Errorf("encoding the holder of lock %q: %w", key, err)
	}
	if err := tx.Bucket(holdersBucket).Put([]byte(key), v); err != nil {
		return fmt.Errorf("writing the holder of lock %q: %w", key, err)
	}
	return nil
}

// holderID is the ID of the acquisition that holds the lock key as holder,
// or "" when no record names it. An unreadable record names nobody.
func holderID(tx *bolt.Tx, key string, holder *models.ProjectLock) string {
	h, err := getHolding(tx, key)
	if err != nil || h == nil || holder == nil || !sameHolding(h.Lock, *holder) {
		return ""
	}
	return h.ID
}

// takenByPullLocked records that holder's pull took the lock it holds by a
// request of its own, when a hand-over's record names that holding: the
// request's acquisition, a new ID, holds it from now on. b.mu must be held.
func (b *BoltDB) takenByPullLocked(key string, holder models.ProjectLock) error {
	if b.qdb == nil {
		return nil
	}
	// Read first: a lock a hand-over served is rarely taken again.
	var h *storedHolding
	err := b.qdb.View(func(tx *bolt.Tx) error {
		var err error
		h, err = getHolding(tx, key)
		return err
	})
	if err != nil || h == nil || !sameHolding(h.Lock, holder) {
		return queueErr(fmt.Sprintf("recording who holds lock %q", key), err)
	}
	return queueErr(fmt.Sprintf("recording who holds lock %q", key), b.qdb.Update(func(tx *bolt.Tx) error {
		return putHolding(tx, key, storedHolding{ID: newToken(), Lock: holder})
	}))
}

// releasedLocked forgets who held the lock key, which was released. b.mu
// must be held.
func (b *BoltDB) releasedLocked(key string) error {
	if b.qdb == nil {
		return nil
	}
	var held bool
	if err := b.qdb.View(func(tx *bolt.Tx) error {
		held = tx.Bucket(holdersBucket).Get([]byte(key)) != nil
		return nil
	}); err != nil || !held {
		return queueErr(fmt.Sprintf("forgetting who held lock %q", key), err)
	}
	return queueErr(fmt.Sprintf("forgetting who held lock %q", key), b.qdb.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(holdersBucket).Delete([]byte(key))
	}))
}
