package backends

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"
	tally "github.com/uber-go/tally/v4"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// A canary fleet runs upstream and enhanced replicas on one Redis. They must
// see each other's locks and never both hold one.
func TestMixedFleet(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	ours := newTestRedis(t, srv.Client(t), RedisOptions{})
	upstream := newUpstreamRedis(t, srv.Client(t))

	t.Run("upstream holds, enhanced is refused and sees it", func(t *testing.T) {
		flush(t, srv.Client(t))
		held := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
		acquired, _, err := upstream.TryLock(held)
		Ok(t, err)
		Assert(t, acquired, "upstream could not lock")

		acquired, curr, err := ours.TryLock(ctx, enhancedtest.Request(enhancedtest.NewLock("org/repo", "dir", "default", "", 2)))
		Ok(t, err)
		Assert(t, !acquired, "enhanced took a lock upstream holds")
		enhancedtest.EqualLocks(t, held, curr)
		listed, err := ours.List(ctx)
		Ok(t, err)
		enhancedtest.EqualLockSets(t, []models.ProjectLock{held}, listed)

		// Upstream keeps no per-pull index: ScanForUnindexedLocks (run in the background) puts
		// its locks in ours, so UnlockByPull finds them.
		_, err = ours.ScanForUnindexedLocks(ctx)
		Ok(t, err)
		released, err := ours.UnlockByPull(ctx, "org/repo", 1)
		Ok(t, err)
		enhancedtest.EqualLockSets(t, []models.ProjectLock{held}, released)
		got, err := upstream.GetLock(held.Project, held.Workspace)
		Ok(t, err)
		Assert(t, got == nil, "upstream still sees a released lock")
	})

	t.Run("enhanced holds, upstream is refused and sees it", func(t *testing.T) {
		flush(t, srv.Client(t))
		held := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
		acquired, _, err := ours.TryLock(ctx, enhancedtest.Request(held))
		Ok(t, err)
		Assert(t, acquired, "enhanced could not lock")
		// Waiter and index keys must not disturb upstream's scans of "pr*".
		waitDone := make(chan struct{})
		go func() {
			defer close(waitDone)
			_, _, _ = ours.TryLockWithTimeout(ctx, enhancedtest.Request(enhancedtest.NewLock("org/repo", "dir", "default", "", 3)), 500*time.Millisecond)
		}()
		enhancedtest.AwaitQueue(t, ours, held, 1)

		acquired, curr, err := upstream.TryLock(enhancedtest.NewLock("org/repo", "dir", "default", "", 2))
		Ok(t, err)
		Assert(t, !acquired, "upstream took a lock enhanced holds")
		enhancedtest.EqualLocks(t, held, curr)
		listed, err := upstream.List()
		Ok(t, err)
		enhancedtest.EqualLockSets(t, []models.ProjectLock{held}, listed)
		<-waitDone

		released, err := upstream.UnlockByPull("org/repo", 1)
		Ok(t, err)
		enhancedtest.EqualLockSets(t, []models.ProjectLock{held}, released)
		got, err := ours.GetLock(ctx, held.Project, held.Workspace)
		Ok(t, err)
		Assert(t, got == nil, "enhanced still sees a lock upstream released")
		listed, err = ours.List(ctx)
		Ok(t, err)
		Equals(t, 0, len(listed))
	})

	t.Run("command locks exclude each other", func(t *testing.T) {
		flush(t, srv.Client(t))
		_, err := ours.LockCommand(ctx, command.Apply, time.Now())
		Ok(t, err)
		_, err = upstream.LockCommand(command.Apply, time.Now())
		Assert(t, err != nil, "upstream took the apply lock enhanced holds")
		seen, err := upstream.CheckCommandLock(command.Apply)
		Ok(t, err)
		Assert(t, seen != nil, "upstream does not see the apply lock")
		Ok(t, upstream.UnlockCommand(command.Apply))

		_, err = upstream.LockCommand(command.Apply, time.Now())
		Ok(t, err)
		_, err = ours.LockCommand(ctx, command.Apply, time.Now())
		Assert(t, err != nil, "enhanced took the apply lock upstream holds")
	})

	// Racing, upstream's GET-then-SET can still overwrite a lock our script
	// set between its GET and its SET: that is upstream's own race, which a
	// fleet of upstream replicas has among themselves. What ours must never
	// do is overwrite a held lock, so in every round both claim, the stored
	// lock is upstream's.
	t.Run("concurrent", func(t *testing.T) {
		flush(t, srv.Client(t))
		const rounds = 500
		bothClaimed := 0
		for round := range rounds {
			ourLock := enhancedtest.NewLock("org/repo", "dir", "default", "", 2*round+1)
			theirLock := enhancedtest.NewLock("org/repo", "dir", "default", "", 2*round+2)
			var ourWin, theirWin bool
			var ourErr, theirErr error
			start := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(2)
			go func() {
				defer wg.Done()
				<-start
				ourWin, _, ourErr = ours.TryLock(ctx, enhancedtest.Request(ourLock))
			}()
			go func() {
				defer wg.Done()
				<-start
				theirWin, _, theirErr = upstream.TryLock(theirLock)
			}()
			close(start)
			wg.Wait()
			Ok(t, ourErr)
			Ok(t, theirErr)
			Assert(t, ourWin || theirWin, "round %d: nobody got the free lock", round)
			stored, err := ours.GetLock(ctx, ourLock.Project, ourLock.Workspace)
			Ok(t, err)
			switch {
			case ourWin && theirWin:
				bothClaimed++
				Equals(t, theirLock.Pull.Num, stored.Pull.Num)
			case ourWin:
				Equals(t, ourLock.Pull.Num, stored.Pull.Num)
			default:
				Equals(t, theirLock.Pull.Num, stored.Pull.Num)
			}
			_, err = ours.Unlock(ctx, ourLock.Project, ourLock.Workspace)
			Ok(t, err)
		}
		t.Logf("mixed fleet: %d of %d rounds claimed by both, each an upstream overwrite", bothClaimed, rounds)
	})
}

// A lock upstream created is in none of our indexes until ScanForUnindexedLocks finds it.
func TestScanFindsUpstreamLocks(t *testing.T) {
	for name, start := range map[string]func(t *testing.T) (*Redis, func(models.ProjectLock)){
		"standalone": func(t *testing.T) (*Redis, func(models.ProjectLock)) {
			client := redistest.Start(t).Client(t)
			return newTestRedis(t, client, RedisOptions{}), func(l models.ProjectLock) {
				value, err := json.Marshal(l)
				Ok(t, err)
				// Exactly what upstream's TryLock writes.
				Ok(t, client.Set(context.Background(), "pr/"+models.GenerateLockKey(l.Project, l.Workspace), value, 0).Err())
			}
		},
		"cluster": func(t *testing.T) (*Redis, func(models.ProjectLock)) {
			client := redistest.StartCluster(t).Client(t)
			return newTestRedis(t, client, RedisOptions{}), func(l models.ProjectLock) {
				value, err := json.Marshal(l)
				Ok(t, err)
				Ok(t, client.Set(context.Background(), "pr/"+models.GenerateLockKey(l.Project, l.Workspace), value, 0).Err())
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			r, upstreamLock := start(t)
			var want []models.ProjectLock
			for i := range 20 {
				l := enhancedtest.NewLock("org/repo", fmt.Sprintf("dir%d", i), "default", "", 1+i%2)
				upstreamLock(l)
				want = append(want, l)
			}
			listed, err := r.List(ctx)
			Ok(t, err)
			Equals(t, 0, len(listed))

			found, err := r.ScanForUnindexedLocks(ctx)
			Ok(t, err)
			Equals(t, len(want), found)
			listed, err = r.List(ctx)
			Ok(t, err)
			enhancedtest.EqualLockSets(t, want, listed)
			released, err := r.UnlockByPull(ctx, "org/repo", 1)
			Ok(t, err)
			Equals(t, len(want)/2, len(released))
		})
	}
}

// Upstream's Redis database on the same Redis and database as a prefixed
// keyspace (the legacy store beside enhanced locking, or after a rollback)
// lists and releases by pull without meeting a key of ours while every kind
// of key exists. A prefix that would make our keys match its scan is refused.
func TestUpstreamScansIgnoreOurKeys(t *testing.T) {
	ctx := context.Background()
	client := redistest.Start(t).Client(t)
	upstream := newUpstreamRedis(t, client)
	for _, prefix := range []string{"prod:", "atlantis-prod:"} {
		t.Run(prefix, func(t *testing.T) {
			flush(t, client)
			ours, err := NewRedis(client, RedisOptions{KeyPrefix: prefix})
			if err != nil {
				Assert(t, strings.HasPrefix(prefix, "pr"), "prefix %q refused: %s", prefix, err)
				ErrContains(t, `choose a prefix that does not start with "pr"`, err)
				return
			}
			t.Cleanup(func() { _ = ours.Close() })

			held := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
			mustTryLock(t, ours, held)
			waiting := enhancedtest.NewLock("org/repo", "dir", "default", "", 2)
			waitDone := make(chan struct{})
			go func() {
				defer close(waitDone)
				_, _, _ = ours.TryLockWithTimeout(ctx, enhancedtest.Request(waiting), 10*time.Second)
			}()
			enhancedtest.AwaitQueue(t, ours, held, 1)
			_, err = ours.UnlockIfOwnedByPull(ctx, held.Project, held.Workspace, 1) // a release record
			Ok(t, err)
			<-waitDone
			_, err = ours.LockCommand(ctx, command.Apply, time.Now())
			Ok(t, err)
			byUpstream := enhancedtest.NewLock("org/repo", "upstream", "default", "", 3)
			acquired, _, err := upstream.TryLock(byUpstream)
			Ok(t, err)
			Assert(t, acquired, "upstream could not lock")

			listed, err := upstream.List()
			Ok(t, err)
			enhancedtest.EqualLockSets(t, []models.ProjectLock{byUpstream}, listed)
			released, err := upstream.UnlockByPull("org/repo", 3)
			Ok(t, err)
			Equals(t, 1, len(released))
		})
	}
}

// Locks a replica without enhanced locking wrote are counted once each, with
// the latest named, however often they are read; ours are not counted.
func TestNonEnhancedWritesAreReported(t *testing.T) {
	ctx := context.Background()
	client := redistest.Start(t).Client(t)
	scope := tally.NewTestScope("", nil)
	ours := newTestRedis(t, client, RedisOptions{Scope: scope})
	upstream := newUpstreamRedis(t, client)
	mustTryLock(t, ours, enhancedtest.NewLock("org/repo", "ours", "default", "", 1))
	Equals(t, int64(0), ours.NonEnhancedWrites().Locks)

	theirs := enhancedtest.NewLock("org/repo", "theirs", "default", "", 2)
	acquired, _, err := upstream.TryLock(theirs)
	Ok(t, err)
	Assert(t, acquired, "upstream could not lock")
	for range 3 {
		_, err = ours.GetLock(ctx, theirs.Project, theirs.Workspace)
		Ok(t, err)
		acquired, _, err = ours.TryLock(ctx, enhancedtest.Request(enhancedtest.NewLock("org/repo", "theirs", "default", "", 3)))
		Ok(t, err)
		Assert(t, !acquired, "took a held lock")
		_, err = ours.List(ctx)
		Ok(t, err)
	}
	seen := ours.NonEnhancedWrites()
	Equals(t, int64(1), seen.Locks)
	Equals(t, "pr/org/repo/theirs/default/", seen.LastKey)
	Assert(t, seen.LastSeen != nil && !seen.LastSeen.IsZero(), "no time")
	Equals(t, int64(1), scope.Snapshot().Counters()["non_enhanced_lock_writes_total+"].Value())
}
