package backends

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/core/boltdb"
	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"
	bolt "go.etcd.io/bbolt"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/legacydb"
)

// TestBoltDBSurvivesHostileQueueFile: whatever the queue file holds (a
// damaged file, another writer), no method panics, an error names the lock,
// and a release still frees the lock and hands it to a readable entry.
func TestBoltDBSurvivesHostileQueueFile(t *testing.T) {
	holder := enhancedtest.NewLock(testRepo, "dir", "default", "", 1)
	lockKey := models.GenerateLockKey(holder.Project, holder.Workspace)
	for _, m := range boltHostileMutations(lockKey) {
		t.Run(m.name, func(t *testing.T) {
			for _, op := range boltHostileOps(holder) {
				ctx := context.Background()
				b, s := newBoltHostileBase(t, holder)
				b.mu.Lock()
				Ok(t, b.qdb.Update(func(tx *bolt.Tx) error { return m.set(tx, s) }))
				b.mu.Unlock()
				err := func() (err error) {
					defer func() {
						if p := recover(); p != nil {
							err = fmt.Errorf("panic: %v", p)
						}
					}()
					return op.run(ctx, b)
				}()
				if op.release {
					Assert(t, err == nil, "%s: %v", op.name, err)
					Assert(t, holderOf(t, b, holder) == 2 || holderOf(t, b, holder) == 4,
						"%s: lock held by pull %d, not handed to a readable entry", op.name, holderOf(t, b, holder))
					continue
				}
				Assert(t, err == nil || errors.Is(err, enhanced.ErrCorruptLock) && strings.Contains(err.Error(), lockKey),
					"%s: want enhanced.ErrCorruptLock naming lock %q, got: %v", op.name, lockKey, err)
			}
		})
	}
}

// boltHostileState names the base state's queue file keys.
type boltHostileState struct {
	// entry is pull 2's entry, the head of the queue; pull 4's follows.
	entry, next []byte
	noticeID    string
}

// newBoltHostileBase is a BoltDB backend where pull 1 holds holder's lock,
// pulls 2 and 4 are queued for it, and another lock's hand-over left a
// notice.
func newBoltHostileBase(t *testing.T, holder models.ProjectLock) (*BoltDB, *boltHostileState) {
	ctx := context.Background()
	b := unsyncedBoltDB(t)
	lock := func(l models.ProjectLock) {
		acquired, _, err := b.TryLock(ctx, enhancedtest.Request(l))
		Ok(t, err)
		Assert(t, acquired, "lock not acquired")
	}
	lock(holder)
	var s boltHostileState
	for _, n := range []int{2, 4} {
		_, err := b.Enqueue(ctx, queueReq(enhancedtest.NewLock(testRepo, "dir", "default", "", n), time.Hour))
		Ok(t, err)
	}
	other := enhancedtest.NewLock(testRepo, "other", "default", "", 5)
	lock(other)
	_, err := b.Enqueue(ctx, queueReq(enhancedtest.NewLock(testRepo, "other", "default", "", 6), time.Hour))
	Ok(t, err)
	_, err = b.Unlock(ctx, other.Project, other.Workspace)
	Ok(t, err)
	Ok(t, b.qdb.View(func(tx *bolt.Tx) error {
		entries, err := lockEntries(tx, models.GenerateLockKey(holder.Project, holder.Workspace))
		if err != nil {
			return err
		}
		s.entry, s.next = entries[0].key, entries[1].key
		id, _ := tx.Bucket(outboxBucket).Cursor().First()
		s.noticeID = string(id)
		return nil
	}))
	return b, &s
}

// unsyncedBoltDB is a BoltDB backend with its queue file, both files written
// without fsync: the table above opens hundreds.
func unsyncedBoltDB(t *testing.T) *BoltDB {
	dir := t.TempDir()
	db, err := bolt.Open(filepath.Join(dir, "atlantis.db"), 0o600, &bolt.Options{NoSync: true})
	Ok(t, err)
	t.Cleanup(func() { _ = db.Close() })
	Ok(t, db.Update(func(tx *bolt.Tx) error {
		for _, name := range []string{"runLocks", "pulls", "globalLocks"} {
			if _, err := tx.CreateBucketIfNotExists([]byte(name)); err != nil {
				return err
			}
		}
		return nil
	}))
	upstream, err := boltdb.NewWithDB(db, "runLocks", "globalLocks")
	Ok(t, err)
	legacy, err := legacydb.Guard(upstream, legacydb.Options{})
	Ok(t, err)
	b := newQueueingBoltDB(t, legacy, filepath.Join(dir, "enhanced-locking-queue.db"))
	b.qdb.NoSync = true
	return b
}

type boltHostileMutation struct {
	name string
	set  func(tx *bolt.Tx, s *boltHostileState) error
}

func boltHostileMutations(lockKey string) []boltHostileMutation {
	entryValue := func(edit func(m map[string]any)) func(tx *bolt.Tx, s *boltHostileState) error {
		return func(tx *bolt.Tx, s *boltHostileState) error {
			var m map[string]any
			if err := json.Unmarshal(tx.Bucket(entriesBucket).Get(s.entry), &m); err != nil {
				return err
			}
			edit(m)
			v, err := json.Marshal(m)
			if err != nil {
				return err
			}
			return tx.Bucket(entriesBucket).Put(s.entry, v)
		}
	}
	put := func(bucket []byte, key func(s *boltHostileState) []byte, value string) func(tx *bolt.Tx, s *boltHostileState) error {
		return func(tx *bolt.Tx, s *boltHostileState) error {
			return tx.Bucket(bucket).Put(key(s), []byte(value))
		}
	}
	head := func(s *boltHostileState) []byte { return s.entry }
	var out []boltHostileMutation
	for _, v := range []string{"not json", "null", "[]", `{"Token":5}`, `{"Lock":{"Pull":{"Num":"x"}}}`} {
		out = append(out, boltHostileMutation{fmt.Sprintf("entry %q", v), put(entriesBucket, head, v)})
	}
	out = append(out,
		boltHostileMutation{"entry without a token", entryValue(func(m map[string]any) { m["Token"] = "" })},
		boltHostileMutation{"entry of another lock", entryValue(func(m map[string]any) {
			m["Lock"].(map[string]any)["Project"].(map[string]any)["Path"] = "elsewhere"
		})},
		boltHostileMutation{"entry key too short", func(tx *bolt.Tx, s *boltHostileState) error {
			return tx.Bucket(entriesBucket).Put(append(entryPrefix(lockKey), 1, 2, 3), tx.Bucket(entriesBucket).Get(s.entry))
		}},
		boltHostileMutation{"entry key without a lock key", func(tx *bolt.Tx, s *boltHostileState) error {
			return tx.Bucket(entriesBucket).Put([]byte("x"), tx.Bucket(entriesBucket).Get(s.entry))
		}},
		boltHostileMutation{"pull index garbage", put(pullsBucket, func(*boltHostileState) []byte {
			return pullKey(testRepo, 2, lockKey)
		}, "x")},
		boltHostileMutation{"pull index naming another pull's entry", func(tx *bolt.Tx, s *boltHostileState) error {
			return tx.Bucket(pullsBucket).Put(pullKey(testRepo, 2, lockKey), s.next)
		}},
		boltHostileMutation{"notice not json", put(outboxBucket, func(s *boltHostileState) []byte { return []byte(s.noticeID) }, "not json")},
		boltHostileMutation{"notice empty", put(outboxBucket, func(s *boltHostileState) []byte { return []byte(s.noticeID) }, "")},
		boltHostileMutation{"due key too short", put(dueBucket, func(*boltHostileState) []byte { return []byte("x") }, "")},
		boltHostileMutation{"due key without a notice", put(dueBucket, func(*boltHostileState) []byte { return dueKey(0, "ghost") }, "")},
	)
	return out
}

type boltHostileOp struct {
	name    string
	release bool
	run     func(ctx context.Context, b *BoltDB) error
}

func boltHostileOps(holder models.ProjectLock) []boltHostileOp {
	pull := func(n int) models.ProjectLock { return enhancedtest.NewLock(testRepo, "dir", "default", "", n) }
	return []boltHostileOp{
		{"Unlock", true, func(ctx context.Context, b *BoltDB) error {
			_, err := b.Unlock(ctx, holder.Project, holder.Workspace)
			return err
		}},
		{"UnlockIfOwnedByPull", true, func(ctx context.Context, b *BoltDB) error {
			_, err := b.UnlockIfOwnedByPull(ctx, holder.Project, holder.Workspace, 1)
			return err
		}},
		{"UnlockByPull", true, func(ctx context.Context, b *BoltDB) error {
			_, err := b.UnlockByPull(ctx, testRepo, 1)
			return err
		}},
		{"TryLock", false, func(ctx context.Context, b *BoltDB) error {
			_, _, err := b.TryLock(ctx, enhancedtest.Request(pull(7)))
			return err
		}},
		{"TryLockWithTimeout", false, func(ctx context.Context, b *BoltDB) error {
			_, _, err := b.TryLockWithTimeout(ctx, enhancedtest.Request(pull(7)), time.Millisecond)
			return err
		}},
		{"Enqueue a new pull", false, func(ctx context.Context, b *BoltDB) error {
			_, err := b.Enqueue(ctx, queueReq(pull(8), time.Hour))
			return err
		}},
		{"Enqueue the queued pull again", false, func(ctx context.Context, b *BoltDB) error {
			_, err := b.Enqueue(ctx, queueReq(pull(2), time.Hour))
			return err
		}},
		{"LeaveQueue", false, func(ctx context.Context, b *BoltDB) error {
			_, err := b.LeaveQueue(ctx, holder.Project, holder.Workspace, testRepo, 2)
			return err
		}},
		{"LeaveQueues", false, func(ctx context.Context, b *BoltDB) error {
			_, err := b.LeaveQueues(ctx, testRepo, 2)
			return err
		}},
		{"Queue", false, func(ctx context.Context, b *BoltDB) error {
			_, err := b.Queue(ctx, holder.Project, holder.Workspace)
			return err
		}},
		{"Queues", false, func(ctx context.Context, b *BoltDB) error {
			_, err := b.Queues(ctx)
			return err
		}},
		{"Sweep", false, func(ctx context.Context, b *BoltDB) error {
			_, err := b.Sweep(ctx)
			return err
		}},
		{"ClaimNotices and deliver", false, func(ctx context.Context, b *BoltDB) error {
			notices, err := b.ClaimNotices(ctx, time.Minute, 10)
			for _, n := range notices {
				err = errors.Join(err, b.MarkNotice(ctx, n, enhanced.NoticeStep("commented"), time.Minute), b.AckNotice(ctx, n))
			}
			return err
		}},
	}
}
