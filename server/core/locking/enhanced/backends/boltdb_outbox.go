package backends

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// The outbox of the queue file holds the notice of every hand-over and
// expiry of a durable entry until it is acknowledged, with the semantics of
// the Redis backend's (redis_outbox.go): a notice is written in the
// transaction that removes its entry, so an entry leaves with exactly one
// notice; a claim leases it until a due time, kept in the due index so that
// claiming reads only what is due; a claim whose lease ended and was taken
// by another can neither mark nor acknowledge it.

// storedNotice is a notice as the outbox bucket keeps it.
type storedNotice struct {
	Kind  enhanced.NoticeKind
	Entry storedEntry
	At    time.Time
	// Due is when the notice may be claimed, in unix microseconds: its due
	// index key.
	Due   int64
	Claim string
	Done  []enhanced.NoticeStep
}

func (n storedNotice) public(id string) enhanced.QueueNotice {
	return enhanced.QueueNotice{ID: id, Kind: n.Kind, Entry: n.Entry.entry(0), At: n.At, Done: n.Done, Claim: n.Claim}
}

// noticeID is unique per entry and kind: an entry leaves its queue once.
func noticeID(kind enhanced.NoticeKind, e *storedEntry) string {
	return string(kind) + ":" + e.Token
}

func dueKey(due int64, id string) []byte {
	return append(binary.BigEndian.AppendUint64(nil, encodeScore(due)), id...)
}

// putNotice writes the notice of e leaving its queue, due now, unless it was
// written already.
func putNotice(tx *bolt.Tx, kind enhanced.NoticeKind, e *storedEntry, now time.Time) error {
	id := noticeID(kind, e)
	if tx.Bucket(outboxBucket).Get([]byte(id)) != nil {
		return nil
	}
	return saveNotice(tx, id, &storedNotice{Kind: kind, Entry: *e, At: now, Due: now.UnixMicro()})
}

// saveNotice writes n and its due index key, which the caller removed if
// the due time changed.
func saveNotice(tx *bolt.Tx, id string, n *storedNotice) error {
	v, err := json.Marshal(n)
	if err != nil {
		return fmt.Errorf("encoding queue notice %q: %w", id, err)
	}
	if err := tx.Bucket(outboxBucket).Put([]byte(id), v); err != nil {
		return fmt.Errorf("writing queue notice %q: %w", id, err)
	}
	if err := tx.Bucket(dueBucket).Put(dueKey(n.Due, id), nil); err != nil {
		return fmt.Errorf("indexing queue notice %q: %w", id, err)
	}
	return nil
}

func getNotice(tx *bolt.Tx, id string) (*storedNotice, error) {
	v := tx.Bucket(outboxBucket).Get([]byte(id))
	if v == nil {
		return nil, nil
	}
	var n storedNotice
	if err := json.Unmarshal(v, &n); err != nil {
		return nil, fmt.Errorf("queue notice %q: %w", id, err)
	}
	return &n, nil
}

func deleteNotice(tx *bolt.Tx, id string, due int64) error {
	if err := tx.Bucket(dueBucket).Delete(dueKey(due, id)); err != nil {
		return fmt.Errorf("unindexing queue notice %q: %w", id, err)
	}
	if err := tx.Bucket(outboxBucket).Delete([]byte(id)); err != nil {
		return fmt.Errorf("removing queue notice %q: %w", id, err)
	}
	return nil
}

// ClaimNotices implements enhanced.QueueBackend.
func (b *BoltDB) ClaimNotices(_ context.Context, lease time.Duration, max int) ([]enhanced.QueueNotice, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	qdb, err := b.queuesLocked()
	if err != nil {
		return nil, fmt.Errorf("claiming queue notices: %w", err)
	}
	now := time.Now()
	// Read first: most polls find nothing due and need no write.
	var due [][]byte
	err = qdb.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(dueBucket).Cursor()
		// A key too short for a due time is claimed, to be dropped below.
		for k, _ := c.First(); k != nil && len(due) < max && (len(k) < 8 || decodeScore(k[:8]) <= now.UnixMicro()); k, _ = c.Next() {
			due = append(due, bytes.Clone(k))
		}
		return nil
	})
	if err != nil || len(due) == 0 {
		return nil, queueErr("claiming queue notices", err)
	}
	claim := newToken()
	var out []enhanced.QueueNotice
	err = qdb.Update(func(tx *bolt.Tx) error {
		out = out[:0]
		for _, k := range due {
			var n *storedNotice
			var err error
			id := ""
			if len(k) >= 8 {
				id = string(k[8:])
				n, err = getNotice(tx, id)
			}
			if n == nil || err != nil {
				// Unreadable: nobody could deliver it. Say so and drop it
				// rather than claim it forever.
				if err != nil {
					b.logger.Err("dropping %s", err)
				}
				if id != "" {
					if err := tx.Bucket(outboxBucket).Delete([]byte(id)); err != nil {
						return err
					}
				}
				if err := tx.Bucket(dueBucket).Delete(k); err != nil {
					return err
				}
				continue
			}
			if err := tx.Bucket(dueBucket).Delete(k); err != nil {
				return fmt.Errorf("unindexing queue notice %q: %w", id, err)
			}
			n.Claim, n.Due = claim, now.Add(lease).UnixMicro()
			if err := saveNotice(tx, id, n); err != nil {
				return err
			}
			out = append(out, n.public(id))
		}
		return nil
	})
	if err != nil {
		return nil, queueErr("claiming queue notices", err)
	}
	return out, nil
}

// WatchNotices signals on the returned channel whenever this backend writes
// a notice, until ctx is done, so that the queue worker delivers a hand-over
// at once rather than at its next poll. The BoltDB backend serves one
// replica, so every notice is written in this process. A signal is sent
// under the mutex that the notice's write holds until it is committed, so a
// claim it prompts finds the notice.
func (b *BoltDB) WatchNotices(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{}, 1)
	b.mu.Lock()
	b.watchers[ch] = struct{}{}
	b.mu.Unlock()
	go func() {
		<-ctx.Done()
		b.mu.Lock()
		delete(b.watchers, ch)
		b.mu.Unlock()
	}()
	return ch
}

// announceLocked signals every watcher that a notice was written. b.mu must
// be held.
func (b *BoltDB) announceLocked() {
	for ch := range b.watchers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// RenewNotice implements enhanced.QueueBackend.
func (b *BoltDB) RenewNotice(_ context.Context, n enhanced.QueueNotice, lease time.Duration) error {
	return b.renewNotice(n, "", lease)
}

// MarkNotice implements enhanced.QueueBackend.
func (b *BoltDB) MarkNotice(_ context.Context, n enhanced.QueueNotice, step enhanced.NoticeStep, lease time.Duration) error {
	if step == "" {
		return fmt.Errorf("marking queue notice %q: no step given", n.ID)
	}
	return b.renewNotice(n, step, lease)
}

// renewNotice renews n's lease, recording step unless it is empty.
func (b *BoltDB) renewNotice(n enhanced.QueueNotice, step enhanced.NoticeStep, lease time.Duration) error {
	return b.updateClaimed(n, func(tx *bolt.Tx, stored *storedNotice) error {
		if err := tx.Bucket(dueBucket).Delete(dueKey(stored.Due, n.ID)); err != nil {
			return err
		}
		if step != "" && !slices.Contains(stored.Done, step) {
			stored.Done = append(stored.Done, step)
		}
		stored.Due = time.Now().Add(lease).UnixMicro()
		return saveNotice(tx, n.ID, stored)
	})
}

// AckNotice implements enhanced.QueueBackend.
func (b *BoltDB) AckNotice(_ context.Context, n enhanced.QueueNotice) error {
	return b.updateClaimed(n, func(tx *bolt.Tx, stored *storedNotice) error {
		return deleteNotice(tx, n.ID, stored.Due)
	})
}

// updateClaimed runs fn on the stored notice while n's claim holds it, and
// fails with ErrNoticeLost otherwise.
func (b *BoltDB) updateClaimed(n enhanced.QueueNotice, fn func(*bolt.Tx, *storedNotice) error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	qdb, err := b.queuesLocked()
	if err != nil {
		return fmt.Errorf("updating queue notice %q: %w", n.ID, err)
	}
	err = qdb.Update(func(tx *bolt.Tx) error {
		stored, err := getNotice(tx, n.ID)
		if err != nil {
			return err
		}
		if stored == nil || stored.Claim != n.Claim {
			return enhanced.ErrNoticeLost
		}
		return fn(tx, stored)
	})
	return queueErr(fmt.Sprintf("updating queue notice %q", n.ID), err)
}
