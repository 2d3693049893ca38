package backends

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
)

type boltWait struct {
	acquired bool
	lock     models.ProjectLock
	err      error
}

// handOverAfterWaitEnds arranges for lock to be handed to a waiter whose wait
// has already ended: the test holds the backend's mutex while the wait's
// timer fires, then releases the holder.
func handOverAfterWaitEnds(t *testing.T, b *BoltDB, holder, waiting models.ProjectLock) boltWait {
	t.Helper()
	result := make(chan boltWait, 1)
	go func() {
		acquired, lock, err := b.TryLockWithTimeout(context.Background(), enhancedtest.Request(waiting), 50*time.Millisecond)
		result <- boltWait{acquired, lock, err}
	}()
	enhancedtest.AwaitQueue(t, b, waiting, 1)
	b.mu.Lock()
	time.Sleep(150 * time.Millisecond) // the wait ends and blocks on b.mu
	_, err := b.unlockLocked(holder.Project, holder.Workspace, nil)
	b.mu.Unlock()
	Ok(t, err)
	return <-result
}

func TestBoltDBWaiterHandedTheLockAsItTimesOutKeepsIt(t *testing.T) {
	b := NewBoltDB(guardedBoltDB(t), nil)
	holder := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	waiting := enhancedtest.NewLock("org/repo", "dir", "default", "", 2)
	mustLockBolt(t, b, holder)
	r := handOverAfterWaitEnds(t, b, holder, waiting)
	Ok(t, r.err)
	Assert(t, r.acquired, "handed lock not kept")
	got, err := b.GetLock(context.Background(), waiting.Project, waiting.Workspace)
	Ok(t, err)
	Equals(t, 2, got.Pull.Num)
}

func TestBoltDBWaiterHandedTheLockAsItIsCancelledPassesItOn(t *testing.T) {
	b := NewBoltDB(guardedBoltDB(t), nil)
	holder := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	mustLockBolt(t, b, holder)
	next := enhancedtest.NewLock("org/repo", "dir", "default", "", 3)
	nextResult := make(chan bool, 1)
	go func() {
		acquired, _, err := b.TryLockWithTimeout(context.Background(), enhancedtest.Request(next), 10*time.Second)
		nextResult <- err == nil && acquired
	}()
	enhancedtest.AwaitQueue(t, b, next, 1)

	ctx, cancel := context.WithCancel(context.Background())
	// Priority puts the cancelled waiter first in line.
	waiting := enhancedtest.NewLock("org/repo", "dir", "default", "", 2)
	result := make(chan boltWait, 1)
	go func() {
		acquired, lock, err := b.TryLockWithTimeout(ctx, enhanced.LockRequest{Lock: waiting, Priority: enhanced.PriorityHigh}, 10*time.Second)
		result <- boltWait{acquired, lock, err}
	}()
	enhancedtest.AwaitQueue(t, b, next, 2)
	b.mu.Lock()
	cancel()
	time.Sleep(100 * time.Millisecond)
	_, err := b.unlockLocked(holder.Project, holder.Workspace, nil)
	b.mu.Unlock()
	Ok(t, err)

	r := <-result
	Assert(t, errors.Is(r.err, context.Canceled), "want context.Canceled, got %v", r.err)
	Assert(t, !r.acquired, "cancelled waiter kept the lock")
	Assert(t, <-nextResult, "lock not passed on to the next waiter")
}

func mustLockBolt(t testing.TB, b *BoltDB, lock models.ProjectLock) {
	t.Helper()
	acquired, _, err := b.TryLock(context.Background(), enhancedtest.Request(lock))
	Ok(t, err)
	Assert(t, acquired, "lock not acquired")
}
