package backends

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"
	. "github.com/runatlantis/atlantis/testing"
	tally "github.com/uber-go/tally/v4"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// A lock deleted outside our scripts (by an upstream replica's Unlock, or by
// hand) leaves a stale index entry that List skips and prunes.
func TestListPrunesLocksDeletedElsewhere(t *testing.T) {
	ctx := context.Background()
	client := redistest.Start(t).Client(t)
	r := newTestRedis(t, client, RedisOptions{})
	gone := enhancedtest.NewLock("org/repo", "gone", "default", "", 1)
	kept := enhancedtest.NewLock("org/repo", "kept", "default", "", 1)
	mustTryLock(t, r, gone)
	mustTryLock(t, r, kept)
	k := r.keys.forProject(gone.Project, gone.Workspace)
	Ok(t, client.Del(ctx, k.lock).Err())

	listed, err := r.List(ctx)
	Ok(t, err)
	Equals(t, 1, len(listed))
	enhancedtest.EqualLocks(t, kept, listed[0])
	members, err := client.SMembers(ctx, k.shard).Result()
	Ok(t, err)
	Equals(t, []string{r.keys.forProject(kept.Project, kept.Workspace).lock}, members)
}

// TestListReportsAnUndecodableLockAndListsTheOthers: a lock value no decoder
// can read (written by hand, by another tool) is left out of List and
// reported, once however often List meets it, by a log line naming its key
// and by the lock_undecodable_total counter; every other lock is listed.
func TestListReportsAnUndecodableLockAndListsTheOthers(t *testing.T) {
	ctx := context.Background()
	client := redistest.Start(t).Client(t)
	logger := logging.NewNoopLogger(t).WithHistory()
	scope := tally.NewTestScope("", nil)
	r := newTestRedis(t, client, RedisOptions{Logger: logger, Scope: scope})
	first := enhancedtest.NewLock("org/repo", "a", "default", "", 1)
	corrupt := enhancedtest.NewLock("org/repo", "b", "default", "", 2)
	last := enhancedtest.NewLock("org/repo", "c", "default", "", 3)
	for _, l := range []models.ProjectLock{first, corrupt, last} {
		mustTryLock(t, r, l)
	}
	key := r.keys.forProject(corrupt.Project, corrupt.Workspace).lock
	Ok(t, client.Set(ctx, key, `{"Pull": "not a pull"`, 0).Err())

	for range 2 {
		listed, err := r.List(ctx)
		Ok(t, err)
		Equals(t, 2, len(listed))
		enhancedtest.EqualLocks(t, first, listed[0])
		enhancedtest.EqualLocks(t, last, listed[1])
	}
	Equals(t, int64(1), scope.Snapshot().Counters()["lock_undecodable_total+"].Value())
	Equals(t, 1, strings.Count(logger.GetHistory(), key))
}

// A client retrying a release whose reply it lost gets the first answer
// again, and does not release the pull that took the lock in between.
func TestRetriedReleaseDoesNotReleaseTheNextHolder(t *testing.T) {
	ctx := context.Background()
	r := newTestRedis(t, redistest.Start(t).Client(t), RedisOptions{})
	first := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	mustTryLock(t, r, first)
	k := r.keys.forProject(first.Project, first.Workspace)
	call := r.releaseCall(k, "", "")

	released, err := r.releasedLock(k, runAll(ctx, r.client, []scriptCall{call})[0], models.ProjectLock{})
	Ok(t, err)
	enhancedtest.EqualLocks(t, first, *released)
	next := enhancedtest.NewLock("org/repo", "dir", "default", "", 2)
	mustTryLock(t, r, next)

	replayed, err := r.releasedLock(k, runAll(ctx, r.client, []scriptCall{call})[0], models.ProjectLock{})
	Ok(t, err)
	enhancedtest.EqualLocks(t, first, *replayed)
	got, err := r.GetLock(ctx, next.Project, next.Workspace)
	Ok(t, err)
	Assert(t, got != nil, "retried release freed the next holder's lock")
	Equals(t, 2, got.Pull.Num)
}

// Start-up repairs a lost per-pull index entry from the global index, with
// no scan of the keyspace, so it costs O(locks) however big the Redis is.
func TestRepairIndexesNeedsNoScan(t *testing.T) {
	ctx := context.Background()
	client := redistest.Start(t).Client(t)
	r := newTestRedis(t, client, RedisOptions{})
	lock := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	mustTryLock(t, r, lock)
	index, _ := r.keys.pull("org/repo", 1)
	Ok(t, client.Del(ctx, index).Err()) // the index write was lost
	for i := range 500 {
		Ok(t, client.Set(ctx, fmt.Sprintf("unrelated:%d", i), "x", 0).Err())
	}

	redistest.ResetStats(t, client)
	found, err := r.RepairIndexes(ctx)
	Ok(t, err)
	Equals(t, 1, found)
	counts := redistest.CommandCount(t, client)
	Equals(t, int64(0), counts["scan"])
	Equals(t, int64(0), counts["keys"])
	released, err := r.UnlockByPull(ctx, "org/repo", 1)
	Ok(t, err)
	Equals(t, 1, len(released))
}
