package backends

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// queue registers a waiter for lock without waiting, as a replica does
// before it blocks; the test then plays the replica's part by hand.
func queue(t testing.TB, r *Redis, lock models.ProjectLock, priority enhanced.Priority) *waiter {
	t.Helper()
	w, err := r.newWaiter(enhanced.LockRequest{Lock: lock, Priority: priority})
	Ok(t, err)
	held, _, err := w.check(context.Background(), models.ProjectLock{})
	Ok(t, err)
	Assert(t, !held, "waiter got the lock at once")
	return w
}

// storedValue is the value at lock's key: the value of the acquisition or
// waiter that holds it.
func storedValue(t testing.TB, r *Redis, lock models.ProjectLock) string {
	t.Helper()
	value, err := r.client.Get(context.Background(), r.keys.forProject(lock.Project, lock.Workspace).lock).Result()
	Ok(t, err)
	return value
}

func TestCrashedWaiterIsSkipped(t *testing.T) {
	ctx := context.Background()
	r := newTestRedis(t, redistest.Start(t).Client(t), RedisOptions{WaiterTTL: 200 * time.Millisecond})
	holder := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	mustTryLock(t, r, holder)
	// A critical waiter whose replica dies: it never heartbeats.
	queue(t, r, enhancedtest.NewLock("org/repo", "dir", "default", "", 2), enhanced.PriorityCritical)
	time.Sleep(300 * time.Millisecond)

	live := enhancedtest.NewLock("org/repo", "dir", "default", "", 3)
	result := make(chan bool, 1)
	go func() {
		acquired, _, err := r.TryLockWithTimeout(ctx, enhancedtest.Request(live), 10*time.Second)
		result <- err == nil && acquired
	}()
	enhancedtest.AwaitQueue(t, r, live, 2)
	_, err := r.Unlock(ctx, holder.Project, holder.Workspace)
	Ok(t, err)
	Assert(t, <-result, "live waiter did not get the lock")
	got, err := r.GetLock(ctx, live.Project, live.Workspace)
	Ok(t, err)
	Equals(t, 3, got.Pull.Num)
	enhancedtest.AwaitQueue(t, r, live, 0)
}

func TestWaiterHeartbeatKeepsItQueued(t *testing.T) {
	ctx := context.Background()
	r := newTestRedis(t, redistest.Start(t).Client(t), RedisOptions{WaiterTTL: 150 * time.Millisecond})
	holder := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	mustTryLock(t, r, holder)
	result := make(chan bool, 1)
	go func() {
		acquired, _, err := r.TryLockWithTimeout(ctx, enhancedtest.Request(enhancedtest.NewLock("org/repo", "dir", "default", "", 2)), 10*time.Second)
		result <- err == nil && acquired
	}()
	time.Sleep(600 * time.Millisecond) // four TTLs
	_, err := r.Unlock(ctx, holder.Project, holder.Workspace)
	Ok(t, err)
	Assert(t, <-result, "waiter that kept heartbeating lost its place")
}

// A waiter handed the lock just as it timed out keeps it.
func TestWaiterHandedTheLockAsItTimesOutKeepsIt(t *testing.T) {
	ctx := context.Background()
	r := newTestRedis(t, redistest.Start(t).Client(t), RedisOptions{})
	holder := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	mustTryLock(t, r, holder)
	waiting := enhancedtest.NewLock("org/repo", "dir", "default", "", 2)
	w := queue(t, r, waiting, enhanced.PriorityNormal)
	_, err := r.Unlock(ctx, holder.Project, holder.Workspace)
	Ok(t, err)
	Equals(t, w.value, storedValue(t, r, waiting))

	held, lock, err := w.leave(ctx, true, holder)
	Ok(t, err)
	Assert(t, held, "handed lock not kept")
	enhancedtest.EqualLocks(t, waiting, lock)
	got, err := r.GetLock(ctx, waiting.Project, waiting.Workspace)
	Ok(t, err)
	enhancedtest.EqualLocks(t, waiting, *got)
}

// A waiter handed the lock just as its caller went away passes it on to the
// next waiter rather than drop or keep it.
func TestWaiterHandedTheLockAsItIsCancelledPassesItOn(t *testing.T) {
	ctx := context.Background()
	r := newTestRedis(t, redistest.Start(t).Client(t), RedisOptions{})
	holder := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	mustTryLock(t, r, holder)
	first := queue(t, r, enhancedtest.NewLock("org/repo", "dir", "default", "", 2), enhanced.PriorityNormal)
	secondLock := enhancedtest.NewLock("org/repo", "dir", "default", "", 3)
	second := queue(t, r, secondLock, enhanced.PriorityNormal)
	_, err := r.Unlock(ctx, holder.Project, holder.Workspace)
	Ok(t, err)
	Equals(t, first.value, storedValue(t, r, holder))

	held, curr, err := first.leave(ctx, false, holder)
	Ok(t, err)
	Assert(t, !held, "cancelled waiter kept the lock")
	enhancedtest.EqualLocks(t, secondLock, curr)
	Equals(t, second.value, storedValue(t, r, holder))
}

// A waiter whose token no longer owns the lock must not free it for the
// pull that holds it now.
func TestLeavingWaiterNeverReleasesAnotherHolder(t *testing.T) {
	ctx := context.Background()
	r := newTestRedis(t, redistest.Start(t).Client(t), RedisOptions{})
	holder := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	mustTryLock(t, r, holder)
	w := queue(t, r, enhancedtest.NewLock("org/repo", "dir", "default", "", 2), enhanced.PriorityNormal)
	_, err := r.Unlock(ctx, holder.Project, holder.Workspace) // handed to w
	Ok(t, err)
	_, err = r.Unlock(ctx, holder.Project, holder.Workspace) // an operator frees it
	Ok(t, err)
	later := enhancedtest.NewLock("org/repo", "dir", "default", "", 3)
	mustTryLock(t, r, later)

	held, _, err := w.leave(ctx, false, holder)
	Ok(t, err)
	Assert(t, !held, "waiter claims a lock it lost")
	got, err := r.GetLock(ctx, later.Project, later.Workspace)
	Ok(t, err)
	Assert(t, got != nil, "leaving waiter released a later holder's lock")
	Equals(t, 3, got.Pull.Num)
}

// Each replica has its own backend and connection; the release on one hands
// the lock to a waiter on another.
func TestWaitAcrossReplicas(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	a := newTestRedis(t, srv.Client(t), RedisOptions{})
	b := openRedis(t, srv.Client(t), RedisOptions{})
	holder := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	mustTryLock(t, a, holder)
	waiting := enhancedtest.NewLock("org/repo", "dir", "default", "", 2)
	result := make(chan struct{})
	go func() {
		defer close(result)
		acquired, _, err := b.TryLockWithTimeout(ctx, enhancedtest.Request(waiting), 10*time.Second)
		if err != nil || !acquired {
			t.Errorf("acquired=%v err=%v", acquired, err)
		}
	}()
	enhancedtest.AwaitQueue(t, a, waiting, 1)
	released := time.Now()
	_, err := a.UnlockIfOwnedByPull(ctx, holder.Project, holder.Workspace, 1)
	Ok(t, err)
	<-result
	// Notified, not polled: waiters heartbeat every 5s (the default), so a
	// wake-up well before that came from the release notification.
	Assert(t, time.Since(released) < 3*time.Second, "handoff took %s", time.Since(released))
}

// TestWaiterHandedTheLockWhileReconnectingTakesItAtOnce: Redis is killed
// and restarted with its append-only file, and another replica hands the
// lock to a waiter before the waiter's subscription is back, so the
// hand-over's message reaches nobody. The waiter still takes the lock as soon
// as it has resubscribed, not at its next heartbeat (a minute here).
func TestWaiterHandedTheLockWhileReconnectingTakesItAtOnce(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t, redistest.WithAppendOnly())
	other := srv.Client(t)
	Ok(t, other.ConfigSet(ctx, "appendfsync", "always").Err())
	releaser := newTestRedis(t, other, RedisOptions{})
	var gate redistest.DialGate
	opts := srv.Options()
	opts.Dialer = gate.Dial
	client := redis.NewClient(opts)
	t.Cleanup(func() { _ = client.Close() })
	r := openRedis(t, client, RedisOptions{WaiterTTL: 3 * time.Minute})

	holder := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	mustTryLock(t, releaser, holder)
	waiting := enhancedtest.NewLock("org/repo", "dir", "default", "", 2)
	result := waitFor(r, waiting, 2*time.Minute)
	enhancedtest.AwaitQueue(t, releaser, waiting, 1)

	gate.Shut()
	killRedis(t, srv, other)
	srv.Restart()
	channel := releaser.keys.forProject(waiting.Project, "default").channel
	subscribers, err := other.PubSubNumSub(ctx, channel).Result()
	Ok(t, err)
	Equals(t, map[string]int64{channel: 0}, subscribers) // the message will reach nobody
	_, err = releaser.Unlock(ctx, holder.Project, holder.Workspace)
	Ok(t, err)
	gate.Open()

	select {
	case err := <-result:
		Ok(t, err)
	case <-time.After(30 * time.Second): // far below the heartbeat: not found by it
		t.Fatal("the waiter handed the lock while reconnecting did not take it")
	}
	got, err := r.GetLock(ctx, waiting.Project, waiting.Workspace)
	Ok(t, err)
	Equals(t, 2, got.Pull.Num)
}

func TestCloseEndsWaits(t *testing.T) {
	r := newTestRedis(t, redistest.Start(t).Client(t), RedisOptions{})
	holder := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	mustTryLock(t, r, holder)
	waiting := enhancedtest.NewLock("org/repo", "dir", "default", "", 2)
	result := waitFor(r, waiting, 10*time.Second)
	enhancedtest.AwaitQueue(t, r, waiting, 1)
	Ok(t, r.Close())
	Assert(t, errors.Is(<-result, errClosed), "wait did not end with the backend")
	enhancedtest.AwaitQueue(t, r, waiting, 0)
}

// waitFor runs TryLockWithTimeout for lock on its own goroutine and sends
// its outcome: nil once the lock is taken.
func waitFor(r *Redis, lock models.ProjectLock, timeout time.Duration) <-chan error {
	result := make(chan error, 1)
	go func() {
		acquired, _, err := r.TryLockWithTimeout(context.Background(), enhancedtest.Request(lock), timeout)
		if err == nil && !acquired {
			err = errors.New("lock not acquired")
		}
		result <- err
	}()
	return result
}

func mustTryLock(t testing.TB, r *Redis, lock models.ProjectLock) {
	t.Helper()
	acquired, _, err := r.TryLock(context.Background(), enhancedtest.Request(lock))
	Ok(t, err)
	Assert(t, acquired, "lock not acquired")
}

// A lock handed to a waiter, then deleted outside our scripts (an upstream
// replica's Unlock, an operator's DEL) and taken by another pull, is not the
// waiter's: ownership is judged from the lock, not from a key that outlived it.
func TestWaiterIsNeverToldItHoldsAnotherPullsLock(t *testing.T) {
	ctx := context.Background()
	client := redistest.Start(t).Client(t)
	r := newTestRedis(t, client, RedisOptions{})
	upstream := newUpstreamRedis(t, client)
	holder := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	mustTryLock(t, r, holder)
	w := queue(t, r, enhancedtest.NewLock("org/repo", "dir", "default", "", 2), enhanced.PriorityNormal)
	_, err := r.Unlock(ctx, holder.Project, holder.Workspace) // handed to the waiter
	Ok(t, err)
	_, err = upstream.Unlock(holder.Project, holder.Workspace) // an upstream replica frees it
	Ok(t, err)
	other := enhancedtest.NewLock("org/repo", "dir", "default", "", 3)
	acquired, _, err := upstream.TryLock(other)
	Ok(t, err)
	Assert(t, acquired, "upstream pull could not take the free lock")

	held, curr, err := w.check(ctx, holder)
	Ok(t, err)
	Assert(t, !held, "waiter told it holds pull #%d's lock", curr.Pull.Num)
	Equals(t, 3, curr.Pull.Num)
}
