package backends

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/legacydb"
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
		acquired, lock, err := b.TryLockWithTimeout(ctx, enhancedtest.RequestWithPriority(waiting, enhanced.PriorityHigh), 10*time.Second)
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

// TestBoltDBReadsSurviveConcurrentWrites: lock reads race lock writes and the
// pull-status writes upstream's components make on the same file. Upstream's
// List and GetLock decode after their transaction ends, from pages a write
// may have reused; through the guard no read may fail or return garbage.
func TestBoltDBReadsSurviveConcurrentWrites(t *testing.T) {
	ctx := context.Background()
	raw := newUpstreamBoltDB(t)
	guarded, err := legacydb.Guard(raw, legacydb.Options{})
	Ok(t, err)
	b := NewBoltDB(guarded, nil)
	// Many held locks make each of upstream's List calls decode for long
	// after its transaction ended, while the writers commit: without the
	// guard this fails every run, mostly with a panic or a fault.
	for i := range 300 {
		mustLockBolt(t, b, enhancedtest.NewLock("org/repo", fmt.Sprintf("held%d", i), "default", "", 99))
	}
	const writers, rounds = 4, 300
	var wg sync.WaitGroup
	errs := make(chan error, 8*writers*rounds)
	for w := range writers {
		wg.Add(3)
		go func() { // lock writes
			defer wg.Done()
			for i := range rounds {
				lock := enhancedtest.NewLock("org/repo", fmt.Sprintf("dir%d-%d", w, i%7), "default", "", w+1)
				if _, _, err := b.TryLock(ctx, enhancedtest.Request(lock)); err != nil {
					errs <- err
				}
				if _, err := b.Unlock(ctx, lock.Project, lock.Workspace); err != nil {
					errs <- err
				}
			}
		}()
		go func() { // pull-status writes, straight to the file as upstream's components make them
			defer wg.Done()
			for i := range rounds {
				pull := models.PullRequest{Num: 100*w + i%5, BaseRepo: models.Repo{FullName: "org/repo", VCSHost: models.VCSHost{Hostname: "github.com"}}, HeadCommit: fmt.Sprint(i)}
				if _, err := raw.UpdatePullWithResults(pull, []command.ProjectResult{{RepoRelDir: fmt.Sprintf("dir%d", i%9), Workspace: "default"}}); err != nil {
					errs <- err
				}
			}
		}()
		go func() { // reads
			defer wg.Done()
			for i := range rounds {
				locks, err := b.List(ctx)
				if err != nil {
					errs <- err
				}
				for _, l := range locks {
					if l.Pull.BaseRepo.FullName != "org/repo" {
						errs <- fmt.Errorf("List returned garbage: %+v", l)
					}
				}
				lock := enhancedtest.NewLock("org/repo", fmt.Sprintf("dir%d-%d", w, i%7), "default", "", w+1)
				if got, err := b.GetLock(ctx, lock.Project, lock.Workspace); err != nil {
					errs <- err
				} else if got != nil && got.Pull.Num != w+1 && got.Pull.Num != 99 {
					errs <- fmt.Errorf("GetLock returned garbage: %+v", got)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		Ok(t, err)
	}
}
