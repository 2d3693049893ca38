package enhancedtest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// waitResult is what one TryLockWithTimeout call returned.
type waitResult struct {
	acquired bool
	lock     models.ProjectLock
	err      error
	took     time.Duration
}

// startWait runs TryLockWithTimeout in the background.
func startWait(ctx context.Context, b enhanced.Backend, req enhanced.LockRequest, timeout time.Duration) <-chan waitResult {
	out := make(chan waitResult, 1)
	go func() {
		start := time.Now()
		acquired, lock, err := b.TryLockWithTimeout(ctx, req, timeout)
		out <- waitResult{acquired, lock, err, time.Since(start)}
	}()
	return out
}

func receive(t testing.TB, results <-chan waitResult) waitResult {
	t.Helper()
	select {
	case r := <-results:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("wait did not return")
		return waitResult{}
	}
}

// releasePath is one way Atlantis releases a lock its holder has.
type releasePath struct {
	how     string
	release func(ctx context.Context, b enhanced.Backend, holder models.ProjectLock) error
}

// releasePaths are the backend calls every release path of Atlantis ends in:
// the locks page and API (Unlock), a pull's own release
// (UnlockIfOwnedByPull), and closing or `atlantis unlock` (UnlockByPull).
func releasePaths() []releasePath {
	return []releasePath{
		{"unlock", func(ctx context.Context, b enhanced.Backend, h models.ProjectLock) error {
			_, err := b.Unlock(ctx, h.Project, h.Workspace)
			return err
		}},
		{"unlock if owned by pull", func(ctx context.Context, b enhanced.Backend, h models.ProjectLock) error {
			_, err := b.UnlockIfOwnedByPull(ctx, h.Project, h.Workspace, h.Pull.Num)
			return err
		}},
		{"unlock by pull", func(ctx context.Context, b enhanced.Backend, h models.ProjectLock) error {
			_, err := b.UnlockByPull(ctx, h.Project.RepoFullName, h.Pull.Num)
			return err
		}},
	}
}

func waitCases() []conformanceCase {
	releases := releasePaths()
	var cases []conformanceCase
	for _, rel := range releases {
		cases = append(cases, conformanceCase{
			name: "waiter gets the lock on " + rel.how,
			run: func(t *testing.T, ctx context.Context, b enhanced.Backend) {
				holder := NewLock(repo, "dir", "default", "", 1)
				mustLock(t, ctx, b, holder)
				waiter := NewLock(repo, "dir", "default", "", 2)
				result := startWait(ctx, b, Request(waiter), 15*time.Second)
				AwaitQueue(t, b, waiter, 1)
				Ok(t, rel.release(ctx, b, holder))
				r := receive(t, result)
				Ok(t, r.err)
				Assert(t, r.acquired, "waiter did not get the released lock")
				EqualLocks(t, waiter, r.lock)
				got, err := b.GetLock(ctx, waiter.Project, waiter.Workspace)
				Ok(t, err)
				Assert(t, got != nil, "handed lock not stored")
				EqualLocks(t, waiter, *got)
			},
		})
	}
	return append(cases, []conformanceCase{
		{
			name: "waiters are served by priority then arrival",
			run: func(t *testing.T, ctx context.Context, b enhanced.Backend) {
				holder := NewLock(repo, "dir", "default", "", 1)
				mustLock(t, ctx, b, holder)
				arrivals := []struct {
					name     string
					priority enhanced.Priority
				}{
					{"low", enhanced.PriorityLow},
					{"normal-1", enhanced.PriorityNormal},
					{"high", enhanced.PriorityHigh},
					{"normal-2", enhanced.PriorityNormal},
					{"critical", enhanced.PriorityCritical},
				}
				var mu sync.Mutex
				var served []string
				var wg sync.WaitGroup
				for i, a := range arrivals {
					lock := NewLock(repo, "dir", "default", "", 10+i)
					wg.Add(1)
					go func() {
						defer wg.Done()
						acquired, _, err := b.TryLockWithTimeout(ctx, RequestWithPriority(lock, a.priority), 20*time.Second)
						if err != nil || !acquired {
							t.Errorf("%s: acquired=%v err=%v", a.name, acquired, err)
							return
						}
						mu.Lock()
						served = append(served, a.name)
						mu.Unlock()
						if _, err := b.UnlockIfOwnedByPull(ctx, lock.Project, lock.Workspace, lock.Pull.Num); err != nil {
							t.Errorf("%s: unlock: %v", a.name, err)
						}
					}()
					AwaitQueue(t, b, lock, i+1)
				}
				_, err := b.Unlock(ctx, holder.Project, holder.Workspace)
				Ok(t, err)
				wg.Wait()
				Equals(t, []string{"critical", "high", "normal-1", "normal-2", "low"}, served)
			},
		},
		{
			name: "timeout returns the holder and leaves no waiter",
			run: func(t *testing.T, ctx context.Context, b enhanced.Backend) {
				holder := NewLock(repo, "dir", "default", "", 1)
				mustLock(t, ctx, b, holder)
				r := receive(t, startWait(ctx, b, Request(NewLock(repo, "dir", "default", "", 2)), 300*time.Millisecond))
				Ok(t, r.err)
				Assert(t, !r.acquired, "held lock acquired")
				Assert(t, r.took >= 300*time.Millisecond, "gave up after %s, before the timeout", r.took)
				EqualLocks(t, holder, r.lock)
				AwaitQueue(t, b, holder, 0)
				// With no waiter left, the release frees the lock.
				_, err := b.Unlock(ctx, holder.Project, holder.Workspace)
				Ok(t, err)
				got, err := b.GetLock(ctx, holder.Project, holder.Workspace)
				Ok(t, err)
				Assert(t, got == nil, "lock handed to a waiter that timed out: %+v", got)
			},
		},
		{
			name: "cancelled wait returns the context error and leaves no waiter",
			run: func(t *testing.T, ctx context.Context, b enhanced.Backend) {
				holder := NewLock(repo, "dir", "default", "", 1)
				mustLock(t, ctx, b, holder)
				waitCtx, cancel := context.WithCancel(ctx)
				waiter := NewLock(repo, "dir", "default", "", 2)
				result := startWait(waitCtx, b, Request(waiter), 15*time.Second)
				AwaitQueue(t, b, waiter, 1)
				cancel()
				r := receive(t, result)
				Assert(t, errors.Is(r.err, context.Canceled), "want context.Canceled, got %v", r.err)
				Assert(t, !r.acquired, "cancelled wait acquired the lock")
				AwaitQueue(t, b, holder, 0)
				_, err := b.Unlock(ctx, holder.Project, holder.Workspace)
				Ok(t, err)
				got, err := b.GetLock(ctx, holder.Project, holder.Workspace)
				Ok(t, err)
				Assert(t, got == nil, "lock handed to a cancelled waiter: %+v", got)
			},
		},
		{
			name: "waiter of the holding pull gets the lock at once",
			run: func(t *testing.T, ctx context.Context, b enhanced.Backend) {
				holder := NewLock(repo, "dir", "default", "", 1)
				mustLock(t, ctx, b, holder)
				r := receive(t, startWait(ctx, b, Request(NewLock(repo, "dir", "default", "", 1)), 15*time.Second))
				Ok(t, r.err)
				Assert(t, r.acquired, "holding pull refused")
				Assert(t, r.took < 2*time.Second, "holding pull waited %s", r.took)
				EqualLocks(t, holder, r.lock)
			},
		},
		{
			name: "a new request does not jump the queue of a released lock",
			run: func(t *testing.T, ctx context.Context, b enhanced.Backend) {
				holder := NewLock(repo, "dir", "default", "", 1)
				mustLock(t, ctx, b, holder)
				waiter := NewLock(repo, "dir", "default", "", 2)
				result := startWait(ctx, b, Request(waiter), 15*time.Second)
				AwaitQueue(t, b, waiter, 1)
				_, err := b.Unlock(ctx, holder.Project, holder.Workspace)
				Ok(t, err)
				// The release handed the lock over in the same step: there is
				// no moment at which a third pull finds it free.
				acquired, curr, err := b.TryLock(ctx, Request(NewLock(repo, "dir", "default", "", 3)))
				Ok(t, err)
				Assert(t, !acquired, "third pull took a lock handed to a waiter")
				EqualLocks(t, waiter, curr)
				r := receive(t, result)
				Ok(t, r.err)
				Assert(t, r.acquired, "waiter lost the lock")
			},
		},
	}...)
}
