package enhanced_test

import (
	"context"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// planningPolicy queues the requests of the pulls it is told plan, at the
// priority it is given, and records what was queued. The queue package's
// Policy learns the same from the command runner.
type planningPolicy struct {
	mu       sync.Mutex
	planning map[int]bool
	priority enhanced.Priority
	queued   []enhanced.EnqueueResult
	left     []enhanced.QueueEntry
}

func (p *planningPolicy) Classify(models.ProjectLock) (enhanced.Priority, time.Duration) {
	return p.priority, p.priority.Headstart(enhancedtest.TestAgingStep)
}

func (p *planningPolicy) ShouldQueue(lock models.ProjectLock) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.planning[lock.Pull.Num]
}

func (p *planningPolicy) Timeout() time.Duration { return time.Hour }

func (p *planningPolicy) Queued(res enhanced.EnqueueResult) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.queued = append(p.queued, res)
}

func (p *planningPolicy) Left(entries []enhanced.QueueEntry) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.left = append(p.left, entries...)
}

func TestAdapter_QueuesPlansAndHandsOverOnRelease(t *testing.T) {
	client := redistest.Start(t).Client(t)
	legacy := openBolt(t, t.TempDir())
	policy := &planningPolicy{planning: map[int]bool{2: true, 3: true}}
	adapter := newRedisAdapter(t, client, legacy, enhanced.AdapterOptions{Queue: policy})
	holder := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	acquired, _, err := adapter.TryLock(holder)
	Ok(t, err)
	Assert(t, acquired, "holder did not lock")

	// Refused, as upstream answers, and queued once however often it asks.
	for i := 0; i < 2; i++ {
		acquired, current, err := adapter.TryLock(enhancedtest.NewLock("org/repo", "dir", "default", "", 2))
		Ok(t, err)
		Assert(t, !acquired, "a held lock was granted")
		Equals(t, 1, current.Pull.Num)
	}
	Equals(t, 2, len(policy.queued))
	Assert(t, policy.queued[0].Joined && !policy.queued[1].Joined, "a repeat joined again: %+v", policy.queued)
	Equals(t, 2, policy.queued[1].Entry.Lock.Pull.Num)

	// A pull not planning fails as upstream's would, unqueued.
	acquired, _, err = adapter.TryLock(enhancedtest.NewLock("org/repo", "dir", "default", "", 4))
	Ok(t, err)
	Assert(t, !acquired, "a held lock was granted")
	Equals(t, 2, len(policy.queued))

	// Merged: the lock is pull 2's, in Redis and in the legacy copy.
	_, err = adapter.UnlockByPull("org/repo", 1)
	Ok(t, err)
	now, err := adapter.GetLock(holder.Project, holder.Workspace)
	Ok(t, err)
	Equals(t, 2, now.Pull.Num)
	adapter.Flush()
	copied, err := legacy.GetLock(holder.Project, holder.Workspace)
	Ok(t, err)
	Assert(t, copied != nil && copied.Pull.Num == 2, "the legacy copy does not show the hand-over: %v", copied)
}

// TestAdapter_ClosedPullLeavesEveryQueue: closing or unlocking a queued pull
// takes it out of its queues before anything is released, so it is never
// handed a lock afterwards, and the policy hears which entries left, so the
// pulls behind them can be told they moved up.
func TestAdapter_ClosedPullLeavesEveryQueue(t *testing.T) {
	client := redistest.Start(t).Client(t)
	policy := &planningPolicy{planning: map[int]bool{2: true}}
	adapter := newRedisAdapter(t, client, openBolt(t, t.TempDir()), enhanced.AdapterOptions{Queue: policy})
	for _, dir := range []string{"a", "b"} {
		acquired, _, err := adapter.TryLock(enhancedtest.NewLock("org/repo", dir, "default", "", 1))
		Ok(t, err)
		Assert(t, acquired, "holder did not lock")
		acquired, _, err = adapter.TryLock(enhancedtest.NewLock("org/repo", dir, "default", "", 2))
		Ok(t, err)
		Assert(t, !acquired, "a held lock was granted")
	}
	_, err := adapter.UnlockByPull("org/repo", 2)
	Ok(t, err)
	var left []string
	for _, e := range policy.left {
		Equals(t, 2, e.Lock.Pull.Num)
		left = append(left, e.Lock.Project.Path)
	}
	sort.Strings(left)
	Equals(t, []string{"a", "b"}, left)
	_, err = adapter.UnlockByPull("org/repo", 1)
	Ok(t, err)
	locks, err := adapter.List()
	Ok(t, err)
	Equals(t, 0, len(locks))
	entries, err := openRedis(t, client).PullEntries(context.Background(), "org/repo", 2)
	Ok(t, err)
	Equals(t, 0, len(entries))
}

// TestAdapter_BoundedWaitComesBeforeTheQueue: a release within the wait
// timeout is taken by the wait; a plan still refused then joins the queue.
func TestAdapter_BoundedWaitComesBeforeTheQueue(t *testing.T) {
	client := redistest.Start(t).Client(t)
	policy := &planningPolicy{planning: map[int]bool{2: true}}
	adapter := newRedisAdapter(t, client, openBolt(t, t.TempDir()), enhanced.AdapterOptions{Queue: policy, WaitTimeout: 300 * time.Millisecond})
	holder := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	acquired, _, err := adapter.TryLock(holder)
	Ok(t, err)
	Assert(t, acquired, "holder did not lock")

	start := time.Now()
	acquired, _, err = adapter.TryLock(enhancedtest.NewLock("org/repo", "dir", "default", "", 2))
	Ok(t, err)
	Assert(t, !acquired, "a held lock was granted")
	Assert(t, time.Since(start) >= 300*time.Millisecond, "queued without waiting first")
	Equals(t, 1, len(policy.queued))

	go func() {
		time.Sleep(100 * time.Millisecond)
		_, _ = adapter.UnlockByPull("org/repo", 1)
	}()
	acquired, _, err = adapter.TryLock(enhancedtest.NewLock("org/repo", "dir", "default", "", 2))
	Ok(t, err)
	Assert(t, acquired, "the pull was not handed the lock")
}
