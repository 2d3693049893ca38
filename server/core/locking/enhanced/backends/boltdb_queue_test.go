package backends

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"
	bolt "go.etcd.io/bbolt"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/legacydb"
)

const testRepo = "org/repo"

func queueFile(t testing.TB) string {
	return filepath.Join(t.TempDir(), "enhanced-locking-queue.db")
}

func queueReq(lock models.ProjectLock, timeout time.Duration) enhanced.QueueRequest {
	return enhancedtest.QueueRequest(lock, enhanced.PriorityNormal, timeout)
}

func claimNotices(t testing.TB, b *BoltDB) []enhanced.QueueNotice {
	t.Helper()
	notices, err := b.ClaimNotices(context.Background(), time.Minute, 100)
	Ok(t, err)
	return notices
}

func holderOf(t testing.TB, b enhanced.Backend, lock models.ProjectLock) int {
	t.Helper()
	got, err := b.GetLock(context.Background(), lock.Project, lock.Workspace)
	Ok(t, err)
	if got == nil {
		return 0
	}
	return got.Pull.Num
}

// crashAfter runs write, which writes atlantis.db and then the queue file,
// and leaves the state a crash between the two writes would: atlantis.db as
// write left it, the queue file as it was before. It closes b; the caller
// reopens the queue file.
func crashAfter(t *testing.T, b *BoltDB, write func()) {
	t.Helper()
	path := b.qdbPath
	snapshot := path + ".before"
	Ok(t, b.qdb.View(func(tx *bolt.Tx) error { return tx.CopyFile(snapshot, 0o600) }))
	write()
	Ok(t, b.Close())
	Ok(t, os.Rename(snapshot, path))
}

// A crash between the two writes of a hand-over or of a pull taking its
// lock by itself leaves a pull holding a lock it still has an entry for;
// one between a release and its hand-over leaves a free lock with entries.
// Opening the queue file repairs each, once (boltdb_settle.go).
func TestBoltDBQueueRepairsACrashBetweenTheTwoFiles(t *testing.T) {
	ctx := context.Background()
	holder := enhancedtest.NewLock(testRepo, "dir", "default", "", 1)
	queued := enhancedtest.NewLock(testRepo, "dir", "default", "", 2)
	cases := []struct {
		name string
		// timeout is the queued entry's: a hand-over is not undone by the
		// entry's time running out while the server was down.
		timeout time.Duration
		crash   func(t *testing.T, b *BoltDB, legacy *legacydb.Guarded)
		// wantHolder holds the lock after the repair; wantNotice is the
		// kind of the one notice it leaves, or "" for none.
		wantHolder models.ProjectLock
		wantNotice enhanced.NoticeKind
	}{
		{
			name:    "hand-over: lock handed, entry not yet removed",
			timeout: time.Hour,
			crash: func(t *testing.T, b *BoltDB, _ *legacydb.Guarded) {
				crashAfter(t, b, func() {
					_, err := b.Unlock(ctx, holder.Project, holder.Workspace)
					Ok(t, err)
				})
			},
			wantHolder: queued,
			wantNotice: enhanced.NoticeTransferred,
		},
		{
			name:    "hand-over whose entry expired while the server was down",
			timeout: 100 * time.Millisecond,
			crash: func(t *testing.T, b *BoltDB, _ *legacydb.Guarded) {
				crashAfter(t, b, func() {
					_, err := b.Unlock(ctx, holder.Project, holder.Workspace)
					Ok(t, err)
				})
				time.Sleep(200 * time.Millisecond)
			},
			wantHolder: queued,
			wantNotice: enhanced.NoticeTransferred,
		},
		{
			// The lock is the entry's until the waiting plan's record: that
			// plan died with the process, so the notice re-plans.
			name:    "hand-over to a queued pull whose plan waits: lock handed, queue file not written",
			timeout: time.Hour,
			crash: func(t *testing.T, b *BoltDB, _ *legacydb.Guarded) {
				waited := make(chan struct{})
				go func() {
					defer close(waited)
					_, _, _ = b.TryLockWithTimeout(ctx, enhancedtest.Request(replanned(queued)), time.Minute)
				}()
				enhancedtest.AwaitQueue(t, b, holder, 2)
				crashAfter(t, b, func() {
					_, err := b.Unlock(ctx, holder.Project, holder.Workspace)
					Ok(t, err)
				})
				<-waited
			},
			wantHolder: queued,
			wantNotice: enhanced.NoticeTransferred,
		},
		{
			name:    "pull's own TryLock: lock taken, entry not yet removed",
			timeout: time.Hour,
			crash: func(t *testing.T, b *BoltDB, legacy *legacydb.Guarded) {
				_, err := legacy.Unlock(holder.Project, holder.Workspace)
				Ok(t, err)
				crashAfter(t, b, func() {
					acquired, _, err := b.TryLock(ctx, enhancedtest.Request(replanned(queued)))
					Ok(t, err)
					Assert(t, acquired, "free lock not taken")
				})
			},
			wantHolder: replanned(queued),
		},
		{
			name:    "release: lock freed, not yet handed over",
			timeout: time.Hour,
			crash: func(t *testing.T, b *BoltDB, legacy *legacydb.Guarded) {
				_, err := legacy.Unlock(holder.Project, holder.Workspace)
				Ok(t, err)
				Ok(t, b.Close())
			},
			wantHolder: queued,
			wantNotice: enhanced.NoticeTransferred,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			legacy, path := guardedBoltDB(t), queueFile(t)
			b := newQueueingBoltDB(t, legacy, path)
			mustLockBolt(t, b, holder)
			entry := enhancedtest.QueueRequest(queued, enhanced.PriorityNormal, c.timeout)
			joined, err := b.Enqueue(ctx, entry)
			Ok(t, err)
			Assert(t, joined.Queued, "not queued")

			c.crash(t, b, legacy)
			b = newQueueingBoltDB(t, legacy, path)
			got, err := b.GetLock(ctx, holder.Project, holder.Workspace)
			Ok(t, err)
			Assert(t, got != nil, "lock left free")
			enhancedtest.EqualLocks(t, c.wantHolder, *got)
			q, err := b.Queue(ctx, holder.Project, holder.Workspace)
			Ok(t, err)
			Equals(t, 0, len(q.Entries))
			if c.wantNotice == enhanced.NoticeTransferred {
				Equals(t, joined.Entry.ID, q.HolderID)
			}

			// Opened again, as after a second restart: nothing more.
			Ok(t, b.Close())
			b = newQueueingBoltDB(t, legacy, path)
			notices := claimNotices(t, b)
			if c.wantNotice == "" {
				Equals(t, 0, len(notices))
				return
			}
			Equals(t, 1, len(notices))
			Equals(t, c.wantNotice, notices[0].Kind)
			Equals(t, joined.Entry.ID, notices[0].Entry.ID)
			Equals(t, 2, notices[0].Entry.Lock.Pull.Num)
		})
	}
}

// replanned is lock requested again by its pull, later.
func replanned(lock models.ProjectLock) models.ProjectLock {
	lock.Time = lock.Time.Add(time.Minute)
	return lock
}

// A queue file write that fails after the lock was written leaves the same
// state in a running server: the next Sweep completes the hand-over, and a
// release by its pull first lets the entry leave, so the lock is not handed
// back to the pull that gives it up.
func TestBoltDBHandOverWhoseQueueWriteFailed(t *testing.T) {
	ctx := context.Background()
	holder := enhancedtest.NewLock(testRepo, "dir", "default", "", 1)
	queued := enhancedtest.NewLock(testRepo, "dir", "default", "", 2)
	next := enhancedtest.NewLock(testRepo, "dir", "default", "", 3)
	cases := []struct {
		name   string
		repair func(t *testing.T, b *BoltDB)
		// wantHolder holds the lock after the repair; wantTransfers are the
		// pulls whose entries left with a transferred notice.
		wantHolder    int
		wantTransfers []int
	}{
		{"the next sweep", func(t *testing.T, b *BoltDB) {
			swept, err := b.Sweep(ctx)
			Ok(t, err)
			Equals(t, enhanced.SweepResult{Transferred: 1, Depth: 1}, swept)
			swept, err = b.Sweep(ctx)
			Ok(t, err)
			Equals(t, enhanced.SweepResult{Depth: 1}, swept)
		}, 2, []int{2}},
		{"the pull's release", func(t *testing.T, b *BoltDB) {
			_, err := b.UnlockIfOwnedByPull(ctx, queued.Project, queued.Workspace, 2)
			Ok(t, err)
		}, 3, []int{2, 3}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			legacy := guardedBoltDB(t)
			b := newQueueingBoltDB(t, legacy, queueFile(t))
			mustLockBolt(t, b, holder)
			res, err := b.Enqueue(ctx, queueReq(queued, time.Hour))
			Ok(t, err)
			Assert(t, res.Queued, "not queued")
			_, err = b.Enqueue(ctx, queueReq(next, time.Hour))
			Ok(t, err)
			// The hand-over's write to atlantis.db, and nothing else.
			_, err = legacy.Unlock(holder.Project, holder.Workspace)
			Ok(t, err)
			acquired, _, err := legacy.TryLock(queued)
			Ok(t, err)
			Assert(t, acquired, "hand-over not written")

			c.repair(t, b)
			Equals(t, c.wantHolder, holderOf(t, b, holder))
			var transfers []int
			for _, n := range claimNotices(t, b) {
				Equals(t, enhanced.NoticeTransferred, n.Kind)
				transfers = append(transfers, n.Entry.Lock.Pull.Num)
			}
			sort.Ints(transfers)
			Equals(t, c.wantTransfers, transfers)
		})
	}
}

// A synchronous waiter of higher priority goes ahead of a durable entry
// that arrived first, in what the queue reads and in what a release does.
func TestBoltDBWaiterOfHigherPriorityGoesAheadOfADurableEntry(t *testing.T) {
	ctx := context.Background()
	b := newQueueingBoltDB(t, guardedBoltDB(t), queueFile(t))
	holder := enhancedtest.NewLock(testRepo, "dir", "default", "", 1)
	mustLockBolt(t, b, holder)
	_, err := b.Enqueue(ctx, queueReq(enhancedtest.NewLock(testRepo, "dir", "default", "", 2), time.Hour))
	Ok(t, err)
	waiter := enhancedtest.NewLock(testRepo, "dir", "default", "", 3)
	granted := make(chan bool, 1)
	go func() {
		acquired, _, err := b.TryLockWithTimeout(ctx, enhancedtest.RequestWithPriority(waiter, enhanced.PriorityHigh), 10*time.Second)
		granted <- err == nil && acquired
	}()
	enhancedtest.AwaitQueue(t, b, holder, 2)

	q, err := b.Queue(ctx, holder.Project, holder.Workspace)
	Ok(t, err)
	Equals(t, 2, len(q.Entries))
	Assert(t, q.Entries[0].Synchronous && q.Entries[0].Lock.Pull.Num == 3, "want the waiter first: %+v", q.Entries)
	Equals(t, enhanced.PriorityHigh, q.Entries[0].Priority)
	entries, err := b.PullEntries(ctx, testRepo, 2)
	Ok(t, err)
	Equals(t, 1, len(entries))
	Equals(t, 2, entries[0].Position)

	_, err = b.UnlockIfOwnedByPull(ctx, holder.Project, holder.Workspace, 1)
	Ok(t, err)
	Assert(t, <-granted, "waiter not handed the lock")
	Equals(t, 0, len(claimNotices(t, b)))
	entries, err = b.PullEntries(ctx, testRepo, 2)
	Ok(t, err)
	Equals(t, 1, entries[0].Position)
	_, err = b.UnlockIfOwnedByPull(ctx, holder.Project, holder.Workspace, 3)
	Ok(t, err)
	Equals(t, 2, holderOf(t, b, holder))
	Equals(t, 1, len(claimNotices(t, b)))
}

func TestBoltDBQueueFileLockedByAnotherProcess(t *testing.T) {
	path := queueFile(t)
	other, err := bolt.Open(path, 0o600, nil)
	Ok(t, err)
	defer other.Close() // nolint: errcheck

	b := NewBoltDB(guardedBoltDB(t), nil)
	defer b.Close() // nolint: errcheck
	err = b.OpenQueues(path)
	Assert(t, err != nil, "opened a queue file another process holds")
	Assert(t, strings.Contains(err.Error(), path) && strings.Contains(err.Error(), "another Atlantis replica is using it"),
		"the error does not say which file or why: %s", err)
	// Locks still work; queues say what they need.
	mustLockBolt(t, b, enhancedtest.NewLock(testRepo, "dir", "default", "", 1))
	_, err = b.Enqueue(context.Background(), queueReq(enhancedtest.NewLock(testRepo, "dir", "default", "", 2), time.Hour))
	Assert(t, errors.Is(err, errQueuesNotOpen), "want errQueuesNotOpen, got %v", err)
	Assert(t, strings.Contains(err.Error(), `"org/repo/dir/default/"`), "the error does not name the lock: %s", err)
}

func TestBoltDBQueueOperationsAfterClose(t *testing.T) {
	b := newQueueingBoltDB(t, guardedBoltDB(t), queueFile(t))
	Ok(t, b.Close())
	_, err := b.ClaimNotices(context.Background(), time.Minute, 1)
	Assert(t, errors.Is(err, errClosed), "want errClosed, got %v", err)
	_, err = b.Sweep(context.Background())
	Assert(t, errors.Is(err, errClosed), "want errClosed, got %v", err)
}

// Scores are offset binary: byte order is numeric order, negative included.
func TestBoltDBEntryKeysSortByScore(t *testing.T) {
	scores := []int64{math.MinInt64, -(100 * 365 * 24 * time.Hour).Microseconds(), -1, 0, 1, time.Now().UnixMicro(), math.MaxInt64}
	var keys [][]byte
	for i := len(scores) - 1; i >= 0; i-- {
		keys = append(keys, entryKey("org/repo/dir/default/", scores[i], uint64(i)))
	}
	sort.Slice(keys, func(i, j int) bool { return bytes.Compare(keys[i], keys[j]) < 0 })
	for i, k := range keys {
		e := storedEntry{key: k}
		Equals(t, scores[i], e.score())
	}
}

// Many pulls queue for, wait for, take and release a few locks at once,
// while sweeps and notice deliveries run: run it with -race. No lock is
// ever free while requests wait for it, every entry leaves its queue at
// most once with a notice, and once everything is released no entry is
// left behind.
func TestBoltDBQueuesUnderConcurrency(t *testing.T) {
	ctx := context.Background()
	b := newQueueingBoltDB(t, guardedBoltDB(t), queueFile(t))
	const locks, pulls, rounds = 3, 8, 40
	lock := func(dir, pull int) models.ProjectLock {
		return enhancedtest.NewLock(testRepo, fmt.Sprintf("dir%d", dir), "default", "", pull)
	}
	var joined sync.Map // entry id -> true
	// report keeps the first errors; the background loops could make more
	// than any buffer holds.
	errs := make(chan error, 100)
	report := func(err error) {
		select {
		case errs <- err:
		default:
		}
	}
	var workers sync.WaitGroup
	for pull := 1; pull <= pulls; pull++ {
		workers.Add(1)
		go func() {
			defer workers.Done()
			rng := rand.New(rand.NewPCG(uint64(pull), 1))
			for range rounds {
				l := lock(rng.IntN(locks), pull)
				var err error
				switch rng.IntN(5) {
				case 0, 1:
					timeout := time.Hour
					if rng.IntN(4) == 0 {
						timeout = 5 * time.Millisecond
					}
					req := enhancedtest.QueueRequest(l, enhanced.Priority(rng.IntN(4)-1), timeout)
					var res enhanced.EnqueueResult
					if res, err = b.Enqueue(ctx, req); err == nil && res.Joined {
						joined.Store(res.Entry.ID, true)
					}
				case 2:
					_, _, err = b.TryLockWithTimeout(ctx, enhancedtest.Request(l), time.Duration(rng.IntN(5))*time.Millisecond)
				case 3:
					_, err = b.UnlockIfOwnedByPull(ctx, l.Project, l.Workspace, pull)
				case 4:
					_, err = b.LeaveQueue(ctx, l.Project, l.Workspace, testRepo, pull)
				}
				if err != nil {
					report(err)
				}
			}
		}()
	}

	stop := make(chan struct{})
	var background sync.WaitGroup
	var notices []enhanced.QueueNotice
	deliver := func() {
		claimed, err := b.ClaimNotices(ctx, time.Minute, 10)
		if err != nil {
			report(err)
		}
		for _, n := range claimed {
			if err := b.AckNotice(ctx, n); err != nil {
				report(err)
			}
		}
		notices = append(notices, claimed...)
	}
	// Each runs until stop is closed.
	background.Add(2)
	loop := func(fn func()) {
		defer background.Done()
		for {
			select {
			case <-stop:
				return
			default:
				fn()
			}
		}
	}
	go loop(deliver)
	go loop(func() {
		if _, err := b.Sweep(ctx); err != nil {
			report(err)
		}
		// A release hands the lock over in the step that frees it.
		for dir := range locks {
			q, err := b.Queue(ctx, lock(dir, 0).Project, "default")
			if err != nil {
				report(err)
			}
			if q.Holder == nil && len(q.Entries) > 0 {
				report(fmt.Errorf("lock dir%d free with %d requests waiting", dir, len(q.Entries)))
			}
		}
	})
	workers.Wait()
	close(stop)
	background.Wait()

	// Release everything: the queues drain by hand-overs and expiries.
	for range 10 * pulls {
		held, err := b.List(ctx)
		Ok(t, err)
		if len(held) == 0 {
			break
		}
		for _, h := range held {
			_, err := b.UnlockIfOwnedByPull(ctx, h.Project, h.Workspace, h.Pull.Num)
			Ok(t, err)
		}
	}
	deliver()
	close(errs)
	for err := range errs {
		Ok(t, err)
	}

	queues, err := b.Queues(ctx)
	Ok(t, err)
	Equals(t, 0, len(queues))
	held, err := b.List(ctx)
	Ok(t, err)
	Equals(t, 0, len(held))
	left := map[string]enhanced.NoticeKind{}
	for _, n := range notices {
		_, ok := joined.Load(n.Entry.ID)
		Assert(t, ok, "notice %s for an entry nobody queued", n.ID)
		kind, twice := left[n.Entry.ID]
		Assert(t, !twice, "entry %s left its queue twice: %s, then %s", n.Entry.ID, kind, n.Kind)
		left[n.Entry.ID] = n.Kind
	}
	kinds := map[enhanced.NoticeKind]int{}
	for _, k := range left {
		kinds[k]++
	}
	t.Logf("entries handed a lock or expired: %v", kinds)
	Assert(t, kinds[enhanced.NoticeTransferred] > 0 && kinds[enhanced.NoticeExpired] > 0, "the run neither handed over nor expired: %v", kinds)
	for pull := 1; pull <= pulls; pull++ {
		entries, err := b.PullEntries(ctx, testRepo, pull)
		Ok(t, err)
		Equals(t, 0, len(entries))
	}
}

// TestBoltDBAnnouncesEveryNotice: the queue worker of the one replica a
// BoltDB backend serves learns of each notice when it is written, a
// hand-over's or an expiry's by a release or a sweep, rather than at its
// next poll; a watch whose context ended is dropped.
func TestBoltDBAnnouncesEveryNotice(t *testing.T) {
	ctx := context.Background()
	b := newQueueingBoltDB(t, guardedBoltDB(t), queueFile(t))
	watchCtx, stopWatching := context.WithCancel(ctx)
	announced := b.WatchNotices(watchCtx)
	await := func(what string) {
		t.Helper()
		select {
		case <-announced:
		case <-time.After(10 * time.Second):
			t.Fatalf("no announcement of %s", what)
		}
	}
	holder := enhancedtest.NewLock(testRepo, "dir", "default", "", 1)
	acquired, _, err := b.TryLock(ctx, enhanced.LockRequest{Lock: holder})
	Ok(t, err)
	Assert(t, acquired, "lock not acquired")
	_, err = b.Enqueue(ctx, queueReq(enhancedtest.NewLock(testRepo, "dir", "default", "", 2), time.Hour))
	Ok(t, err)
	_, err = b.Enqueue(ctx, queueReq(enhancedtest.NewLock(testRepo, "dir", "default", "", 3), time.Millisecond))
	Ok(t, err)
	Equals(t, 0, len(announced))

	_, err = b.Unlock(ctx, holder.Project, holder.Workspace)
	Ok(t, err)
	await("the hand-over")
	time.Sleep(5 * time.Millisecond)
	res, err := b.Sweep(ctx)
	Ok(t, err)
	Equals(t, 1, res.Expired)
	await("the expiry")
	Equals(t, 2, len(claimNotices(t, b)))

	stopWatching()
	for {
		b.mu.Lock()
		n := len(b.watchers)
		b.mu.Unlock()
		if n == 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
}
