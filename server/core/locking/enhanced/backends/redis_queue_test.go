package backends

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// heldOnRedis is a backend on a fresh Redis, its client, and pull 1's lock
// it holds.
func heldOnRedis(t *testing.T) (*redis.Client, *Redis, models.ProjectLock) {
	client := redistest.Start(t).Client(t)
	r := newTestRedis(t, client, RedisOptions{})
	holder := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	mustTryLock(t, r, holder)
	return client, r, holder
}

// The hand-over to a queued pull whose plan waits is that plan's from the
// release on, not from when its replica wakes to the announcement: a queue
// worker that reads the queue first (the waiting replica paused, slow, or
// its connection stalled, while its waiter is still alive) must not re-plan
// what the waiting plan runs when it wakes.
func TestRedisHandOverToAQueuedPullIsItsWaitersBeforeItWakes(t *testing.T) {
	ctx := context.Background()
	client, r, holder := heldOnRedis(t)
	queued, err := r.Enqueue(ctx, enhancedtest.QueueRequest(enhancedtest.NewLock("org/repo", "dir", "default", "", 2), enhanced.PriorityNormal, time.Hour))
	Ok(t, err)
	Assert(t, queued.Queued, "pull 2 not queued")

	// Pull 2 plans again on a replica that registers its wait and then
	// hears nothing: its waiter is alive, its loop is not running.
	w, err := openRedis(t, client, RedisOptions{}).newWaiter(enhancedtest.Request(enhancedtest.NewLock("org/repo", "dir", "default", "", 2)))
	Ok(t, err)
	held, _, err := w.check(ctx, holder)
	Ok(t, err)
	Assert(t, !held, "the wait was granted a held lock")

	_, err = r.Unlock(ctx, holder.Project, holder.Workspace)
	Ok(t, err)
	q, err := r.Queue(ctx, holder.Project, holder.Workspace)
	Ok(t, err)
	Equals(t, 2, q.Holder.Pull.Num)
	Assert(t, q.HolderID != queued.Entry.ID, "the lock names the entry %s, so the queue worker re-plans, and the waiting plan takes it too when it wakes", q.HolderID)

	held, lock, err := w.check(ctx, holder)
	Ok(t, err)
	Assert(t, held, "the waiting plan was not handed its pull's lock")
	Equals(t, 2, lock.Pull.Num)
	again, err := r.Queue(ctx, holder.Project, holder.Workspace)
	Ok(t, err)
	Equals(t, q.HolderID, again.HolderID)
}

// A queue's keys go with it: once its entries left and the lock is free,
// none of the lock's own queue keys is left behind (the bound on their
// expiries included), so nothing outlives the lock it belongs to.
func TestRedisQueueKeysGoWithTheQueue(t *testing.T) {
	ctx := context.Background()
	client, r, holder := heldOnRedis(t)
	for pull := 2; pull <= 3; pull++ {
		_, err := r.Enqueue(ctx, enhancedtest.QueueRequest(enhancedtest.NewLock("org/repo", "dir", "default", "", pull), enhanced.PriorityNormal, time.Hour))
		Ok(t, err)
	}
	for pull := 1; pull <= 3; pull++ {
		_, err := r.UnlockIfOwnedByPull(ctx, holder.Project, holder.Workspace, pull)
		Ok(t, err)
	}
	k := r.keys.forProject(holder.Project, holder.Workspace)
	for _, key := range []string{k.lock, k.queue, k.deadlines, k.values, k.entries} {
		n, err := client.Exists(ctx, key).Result()
		Ok(t, err)
		Equals(t, int64(0), n)
	}
}
