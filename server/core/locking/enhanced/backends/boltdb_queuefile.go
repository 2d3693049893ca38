package backends

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// The queue file is a bbolt file of the BoltDB backend's own, beside
// upstream's atlantis.db, which upstream owns and holds with a file lock. It
// keeps the durable queues and the outbox:
//
//	entries  lock key 0x00 score 8 bytes seq 8 bytes -> storedEntry as JSON
//	expiries that entry's key -> its expiry, unix microseconds, 8 bytes
//	pulls    pull id 0x00 lock key -> that entry's key in entries
//	holders  lock key -> storedHolding as JSON (boltdb_queue_holder.go)
//	outbox   notice id -> storedNotice as JSON
//	due      due time 8 bytes notice id -> nothing
//
// A lock's entries share a key prefix and sort by score, so its head is one
// cursor Seek and joining or leaving is one B+tree write: O(log n). The score
// is arrival minus headstart (enhanced.Priority.Headstart) in microseconds,
// in offset binary so that the negative scores of critical requests (a
// headstart of a century) sort before the positive ones; seq breaks ties in
// arrival order. Lock keys, repo names and notice ids contain no 0x00, so a
// prefix ending in 0x00 holds exactly one lock's or one pull's keys, and
// entries sort by lock key first.
//
// The pulls and expiries indexes are written in the transaction that writes
// or deletes their entry, so they always agree with it. The expiries let a
// position be counted without decoding the entries ahead, of which the
// expired ones do not count. Every write to the file is made under the
// backend's mutex, which also orders it with the writes to atlantis.db that
// the two files cannot share a transaction for (see boltdb_settle.go).
var (
	entriesBucket  = []byte("entries")
	expiriesBucket = []byte("expiries")
	pullsBucket    = []byte("pulls")
	holdersBucket  = []byte("holders")
	outboxBucket   = []byte("outbox")
	dueBucket      = []byte("due")
)

// queueFileLockTimeout is how long OpenQueues waits for another process to
// let go of the queue file.
const queueFileLockTimeout = time.Second

// errQueuesNotOpen is returned by the queue operations of a BoltDB backend
// whose queue file was never opened.
var errQueuesNotOpen = errors.New("durable lock queues are not open: the BoltDB backend keeps them in a file of its own, opened with OpenQueues (the server opens enhanced-locking-queue.db in its data dir)")

// OpenQueues opens the queue file at path, creating it if need be, and
// reconciles it with the locks in atlantis.db (as Sweep does), which repairs
// what a crash between a write to one file and the write to the other left.
// Until it is called the backend's queue operations fail; locks and
// synchronous waits work without it. Call it before the backend serves lock
// requests: until then a lock a crash left free can be taken past its
// queue. A failed reconciliation is logged, not returned: the queues are
// usable and the next Sweep tries again.
func (b *BoltDB) OpenQueues(path string) error {
	qdb, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: queueFileLockTimeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return fmt.Errorf("opening the lock queue file %s: another Atlantis replica is using it; the BoltDB backend serves a single replica, so stop the other one or give each its own --data-dir", path)
	}
	if err != nil {
		return fmt.Errorf("opening the lock queue file %s: %w", path, err)
	}
	err = qdb.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{entriesBucket, expiriesBucket, pullsBucket, holdersBucket, outboxBucket, dueBucket} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("creating bucket %q: %w", name, err)
			}
		}
		return indexExpiries(tx)
	})
	if err != nil {
		_ = qdb.Close()
		return fmt.Errorf("preparing the lock queue file %s: %w", path, err)
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closing:
		_ = qdb.Close()
		return fmt.Errorf("opening the lock queue file %s: %w", path, errClosed)
	case b.qdb != nil:
		_ = qdb.Close()
		return fmt.Errorf("opening the lock queue file %s: queues are already open from %s", path, b.qdbPath)
	}
	b.qdb, b.qdbPath = qdb, path
	res, err := b.sweepLocked()
	if err != nil {
		b.logger.Warn("reconciling the lock queues of %s with the locks: %s", path, err)
	}
	if res.Expired > 0 || res.Transferred > 0 {
		b.logger.Info("lock queues reconciled at start: %d entries expired, %d locks handed over", res.Expired, res.Transferred)
	}
	return nil
}

// queuesLocked returns the open queue file. b.mu must be held.
func (b *BoltDB) queuesLocked() (*bolt.DB, error) {
	switch {
	case b.qdb != nil:
		return b.qdb, nil
	case b.closing:
		return nil, errClosed
	default:
		return nil, errQueuesNotOpen
	}
}

// closeQueuesLocked closes the queue file, if open. b.mu must be held.
func (b *BoltDB) closeQueuesLocked() error {
	if b.qdb == nil {
		return nil
	}
	err := b.qdb.Close()
	b.qdb = nil
	if err != nil {
		return fmt.Errorf("closing the lock queue file %s: %w", b.qdbPath, err)
	}
	return nil
}

// queueErr says what failed, or is nil.
func queueErr(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}

// storedEntry is a durable entry as the entries bucket keeps it; key is its
// key there, not stored in the value.
type storedEntry struct {
	key []byte

	Token string
	// Lock is the value installed when the entry is handed the lock.
	Lock     models.ProjectLock
	Priority enhanced.Priority
	Enqueued time.Time
	Expires  time.Time
}

// entry is the public view of e at position.
func (e storedEntry) entry(position int) enhanced.QueueEntry {
	return enhanced.QueueEntry{ID: e.Token, Lock: e.Lock, Priority: e.Priority, Position: position, Enqueued: e.Enqueued, Expires: e.Expires}
}

// score is the entry's place in its queue (see the layout above).
func (e storedEntry) score() int64 {
	return decodeScore(e.key[len(e.key)-16 : len(e.key)-8])
}

func (e storedEntry) lockKey() string {
	return models.GenerateLockKey(e.Lock.Project, e.Lock.Workspace)
}

func (e storedEntry) expired(now time.Time) bool {
	return e.Expires.Before(now)
}

// indexExpiries writes the expiries index of the entries a queue file
// written before it existed holds; of the others, it reads only the keys.
func indexExpiries(tx *bolt.Tx) error {
	expiries := tx.Bucket(expiriesBucket)
	c := tx.Bucket(entriesBucket).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if expiries.Get(k) != nil {
			continue
		}
		e, err := decodeEntry(k, v)
		if err != nil {
			continue // the next sweep drops it
		}
		if err := expiries.Put(e.key, expiryValue(e.Expires)); err != nil {
			return fmt.Errorf("indexing the expiry of a queue entry for lock %q: %w", e.lockKey(), err)
		}
	}
	return nil
}

func expiryValue(t time.Time) []byte {
	return binary.BigEndian.AppendUint64(nil, encodeScore(t.UnixMicro()))
}

// waitsAt says whether the entry stored at key has not expired by now, from
// the expiries index alone.
func waitsAt(tx *bolt.Tx, key []byte, now time.Time) bool {
	v := tx.Bucket(expiriesBucket).Get(key)
	return v == nil || decodeScore(v) >= now.UnixMicro()
}

// checkKeyPart refuses a lock key or repo name with a 0x00 byte, which
// would let one lock's key prefix hold another's.
func checkKeyPart(what, s string) error {
	if strings.IndexByte(s, 0) >= 0 {
		return fmt.Errorf("%s %q contains a NUL byte", what, s)
	}
	return nil
}

func entryPrefix(lockKey string) []byte {
	return append([]byte(lockKey), 0)
}

func entryKey(lockKey string, score int64, seq uint64) []byte {
	k := entryPrefix(lockKey)
	k = binary.BigEndian.AppendUint64(k, encodeScore(score))
	return binary.BigEndian.AppendUint64(k, seq)
}

// lockKeyOf is the lock key an entries key starts with.
func lockKeyOf(entryKey []byte) string {
	lockKey, _, _ := bytes.Cut(entryKey, []byte{0})
	return string(lockKey)
}

// encodeScore is offset binary: flipping the sign bit makes unsigned
// big-endian order the signed order.
func encodeScore(score int64) uint64 {
	return uint64(score) ^ (1 << 63)
}

func decodeScore(b []byte) int64 {
	return int64(binary.BigEndian.Uint64(b) ^ (1 << 63))
}

func pullID(repoFullName string, pullNum int) string {
	return repoFullName + "#" + strconv.Itoa(pullNum)
}

func pullPrefix(repoFullName string, pullNum int) []byte {
	return append([]byte(pullID(repoFullName, pullNum)), 0)
}

func pullKey(repoFullName string, pullNum int, lockKey string) []byte {
	return append(pullPrefix(repoFullName, pullNum), lockKey...)
}

// pullKeyOf is the pull index key of an entry of lock's pull.
func pullKeyOf(lock models.ProjectLock) []byte {
	return pullKey(baseRepo(lock), lock.Pull.Num, models.GenerateLockKey(lock.Project, lock.Workspace))
}

// getEntry reads the entry stored at key, or nil.
func getEntry(tx *bolt.Tx, key []byte) (*storedEntry, error) {
	v := tx.Bucket(entriesBucket).Get(key)
	if v == nil {
		return nil, nil
	}
	return decodeEntry(key, v)
}

// decodeEntry reads an entries bucket pair. A key not of the layout above, or
// a value that is not an entry of the lock its key names (a damaged file,
// another writer), is corrupt: no release can serve it, and a release skips
// it (durableHeadLocked) as the sweep drops it (expireLocked).
func decodeEntry(key, value []byte) (*storedEntry, error) {
	lockKey := lockKeyOf(key)
	if len(key) != len(lockKey)+17 {
		return nil, corruptEntryError(lockKey, fmt.Errorf("an entry key of %d bytes", len(key)))
	}
	e := &storedEntry{key: bytes.Clone(key)}
	if err := json.Unmarshal(value, e); err != nil {
		return nil, corruptEntryError(lockKey, err)
	}
	if e.Token == "" || e.lockKey() != lockKey {
		return nil, corruptEntryError(lockKey, fmt.Errorf("entry %q is for lock %q", e.Token, e.lockKey()))
	}
	return e, nil
}

// corruptEntryError reports an entry of the queue file that cannot be read.
func corruptEntryError(lockKey string, cause error) error {
	return fmt.Errorf("failed to deserialize queue entry: %w (%v; an entry for lock %q in the lock queue file: "+
		"the next sweep drops it, and its pull queues again when it plans)", enhanced.ErrCorruptLock, cause, lockKey)
}

// pullEntry reads the entry of the pull for lockKey, or nil.
func pullEntry(tx *bolt.Tx, repoFullName string, pullNum int, lockKey string) (*storedEntry, error) {
	key := tx.Bucket(pullsBucket).Get(pullKey(repoFullName, pullNum, lockKey))
	if key == nil {
		return nil, nil
	}
	e, err := getEntry(tx, key)
	if e != nil && (baseRepo(e.Lock) != repoFullName || e.Lock.Pull.Num != pullNum || e.lockKey() != lockKey) {
		// A damaged index names another pull's entry: this pull has none.
		return nil, nil
	}
	return e, err
}

func putEntry(tx *bolt.Tx, e *storedEntry) error {
	v, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encoding queue entry for lock %q: %w", e.lockKey(), err)
	}
	if err := tx.Bucket(entriesBucket).Put(e.key, v); err != nil {
		return fmt.Errorf("writing queue entry for lock %q: %w", e.lockKey(), err)
	}
	if err := tx.Bucket(pullsBucket).Put(pullKeyOf(e.Lock), e.key); err != nil {
		return fmt.Errorf("indexing queue entry for lock %q: %w", e.lockKey(), err)
	}
	if err := tx.Bucket(expiriesBucket).Put(e.key, expiryValue(e.Expires)); err != nil {
		return fmt.Errorf("indexing the expiry of queue entry for lock %q: %w", e.lockKey(), err)
	}
	return nil
}

// deleteEntry removes an entry and its index keys.
func deleteEntry(tx *bolt.Tx, e *storedEntry) error {
	if err := dropEntryKey(tx, e.key); err != nil {
		return err
	}
	if err := tx.Bucket(pullsBucket).Delete(pullKeyOf(e.Lock)); err != nil {
		return fmt.Errorf("unindexing queue entry for lock %q: %w", lockKeyOf(e.key), err)
	}
	return nil
}

// dropEntryKey removes the entry stored at key and its expiry, leaving its
// pull index key to the caller.
func dropEntryKey(tx *bolt.Tx, key []byte) error {
	key = bytes.Clone(key)
	if err := tx.Bucket(entriesBucket).Delete(key); err != nil {
		return fmt.Errorf("removing queue entry for lock %q: %w", lockKeyOf(key), err)
	}
	if err := tx.Bucket(expiriesBucket).Delete(key); err != nil {
		return fmt.Errorf("unindexing the expiry of queue entry for lock %q: %w", lockKeyOf(key), err)
	}
	return nil
}

// lockEntries reads lockKey's entries, head first.
func lockEntries(tx *bolt.Tx, lockKey string) ([]*storedEntry, error) {
	prefix := entryPrefix(lockKey)
	var out []*storedEntry
	c := tx.Bucket(entriesBucket).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		e, err := decodeEntry(k, v)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// queuedLockKeys lists the locks with entries, in lock key order: one Seek
// per lock past the previous one's entries.
func queuedLockKeys(tx *bolt.Tx) []string {
	var keys []string
	c := tx.Bucket(entriesBucket).Cursor()
	for k, _ := c.First(); k != nil; {
		key := lockKeyOf(k)
		keys = append(keys, key)
		k, _ = c.Seek(append([]byte(key), 1))
	}
	return keys
}
