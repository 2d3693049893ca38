package enhanced_test

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

type tryLockResult struct {
	acquired bool
	current  models.ProjectLock
	err      error
}

func tryLockAsync(a *enhanced.Adapter, lock models.ProjectLock) <-chan tryLockResult {
	out := make(chan tryLockResult, 1)
	go func() {
		acquired, current, err := a.TryLock(lock)
		out <- tryLockResult{acquired, current, err}
	}()
	return out
}

// TestAdapter_HealthReportsDoNotHoldUpWaits: with the fallback and a wait
// timeout, the periodic "healthy" report arrives while a request waits for a
// lock. It must not stall locking: the holder's unlock goes through at once
// and the waiting pull gets the lock, and ActiveBackend (behind /healthz and
// /readyz) answers meanwhile.
func TestAdapter_HealthReportsDoNotHoldUpWaits(t *testing.T) {
	client := redistest.Start(t).Client(t)
	adapter := newRedisAdapter(t, client, openBolt(t, t.TempDir()), enhanced.AdapterOptions{
		FallbackToLegacy: true,
		WaitTimeout:      20 * time.Second,
	})
	holder := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	acquired, _, err := adapter.TryLock(holder)
	Ok(t, err)
	Assert(t, acquired, "lock not acquired")
	waited := tryLockAsync(adapter, enhancedtest.NewLock("org/repo", "dir", "default", "", 2))
	enhancedtest.AwaitQueue(t, openRedis(t, client), holder, 1)

	stop := make(chan struct{})
	defer close(stop)
	var reports atomic.Int64
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
				adapter.BackendHealthChanged(true)
				reports.Add(1)
				time.Sleep(time.Millisecond)
			}
		}
	}()
	for reports.Load() < 10 {
		time.Sleep(time.Millisecond)
	}
	probed := make(chan string, 1)
	go func() { probed <- adapter.ActiveBackend() }()
	select {
	case active := <-probed:
		Equals(t, "redis", active)
	case got := <-waited:
		t.Fatalf("ActiveBackend blocked until the wait ended (%+v)", got)
	}
	_, err = adapter.UnlockIfOwnedByPull(holder.Project, holder.Workspace, 1)
	Ok(t, err)

	got := <-waited
	Ok(t, got.err)
	Assert(t, got.acquired, "the waiting pull did not get the released lock")
	Equals(t, 2, got.current.Pull.Num)
}

// TestAdapter_SwitchToFallbackDoesNotWaitForWaits: a mode switch while a
// request waits happens at once.
func TestAdapter_SwitchToFallbackDoesNotWaitForWaits(t *testing.T) {
	client := redistest.Start(t).Client(t)
	adapter := newRedisAdapter(t, client, openBolt(t, t.TempDir()), enhanced.AdapterOptions{
		FallbackToLegacy: true,
		WaitTimeout:      20 * time.Second,
	})
	holder := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	acquired, _, err := adapter.TryLock(holder)
	Ok(t, err)
	Assert(t, acquired, "lock not acquired")
	waited := tryLockAsync(adapter, enhancedtest.NewLock("org/repo", "dir", "default", "", 2))
	enhancedtest.AwaitQueue(t, openRedis(t, client), holder, 1)

	switched := make(chan struct{})
	go func() {
		adapter.BackendHealthChanged(false)
		close(switched)
	}()
	select {
	case <-switched:
		Equals(t, "legacy-fallback", adapter.ActiveBackend())
	case got := <-waited:
		t.Fatalf("the switch to the fallback waited for the wait to end (%+v)", got)
	}
}

// TestAdapter_WaitGrantedAfterFallbackIsSettledByLegacy: the backend hands a
// waiting request the lock after the fallback began. The legacy database,
// which serves now, still has the holder, so the request is refused, and the
// replay gives the backend's grant back: the two stores end up agreeing.
func TestAdapter_WaitGrantedAfterFallbackIsSettledByLegacy(t *testing.T) {
	ctx := context.Background()
	client := redistest.Start(t).Client(t)
	legacy := openBolt(t, t.TempDir())
	backend, err := backends.NewRedis(client, backends.RedisOptions{WaiterTTL: 300 * time.Millisecond, Logger: logging.NewNoopLogger(t)})
	Ok(t, err)
	t.Cleanup(func() { backend.Close() }) // nolint: errcheck
	adapter := newAdapter(t, guard(t, legacy), backend, enhanced.AdapterOptions{
		BackendName:         "redis",
		SeparateLegacyLocks: true,
		FallbackToLegacy:    true,
		WaitTimeout:         20 * time.Second,
		Logger:              logging.NewNoopLogger(t),
	})
	holder := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	acquired, _, err := adapter.TryLock(holder)
	Ok(t, err)
	Assert(t, acquired, "lock not acquired")
	waited := tryLockAsync(adapter, enhancedtest.NewLock("org/repo", "dir", "default", "", 2))
	enhancedtest.AwaitQueue(t, backend, holder, 1)

	adapter.BackendHealthChanged(false)
	// An operator deletes the lock in Redis: the waiter's next heartbeat
	// takes it, after the fallback began.
	Ok(t, client.Del(ctx, "pr/org/repo/dir/default/").Err())
	got := <-waited
	Ok(t, got.err)
	Assert(t, !got.acquired, "granted a lock the serving legacy database gives to pull #1")
	Equals(t, 1, got.current.Pull.Num)

	adapter.BackendHealthChanged(true)
	Equals(t, "redis", adapter.ActiveBackend())
	inRedis, err := backend.GetLock(ctx, holder.Project, holder.Workspace)
	Ok(t, err)
	Assert(t, inRedis != nil && inRedis.Pull.Num == 1, "replay left Redis with %+v, want pull #1's lock", inRedis)
}

// TestAdapter_FallbackReplaySurvivesACrash: the replica dies during a
// fallback. The next start replays what the fallback changed: a lock released
// meanwhile does not stay held in Redis, one taken meanwhile is there.
func TestAdapter_FallbackReplaySurvivesACrash(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t, redistest.WithAppendOnly())
	client := fastClient(t, srv)
	dir := t.TempDir()
	journalPath := filepath.Join(dir, "fallback.journal")
	journal, err := enhanced.OpenFallbackJournal(journalPath)
	Ok(t, err)
	legacy := openBolt(t, dir)
	adapter := newRedisAdapter(t, client, legacy, enhanced.AdapterOptions{FallbackToLegacy: true, FallbackJournal: journal})
	before := enhancedtest.NewLock("org/repo", "before", "default", "", 1)
	acquired, _, err := adapter.TryLock(before)
	Ok(t, err)
	Assert(t, acquired, "lock not acquired")

	srv.Stop()
	adapter.BackendHealthChanged(false)
	_, err = adapter.UnlockIfOwnedByPull(before.Project, before.Workspace, 1)
	Ok(t, err)
	during := enhancedtest.NewLock("org/repo", "during", "default", "", 2)
	acquired, _, err = adapter.TryLock(during)
	Ok(t, err)
	Assert(t, acquired, "fallback did not grant a free lock")
	Ok(t, journal.Close()) // the process dies here: nothing more is replayed

	srv.Restart()
	restartedJournal, err := enhanced.OpenFallbackJournal(journalPath)
	Ok(t, err)
	restarted := newRedisAdapter(t, srv.Client(t), legacy, enhanced.AdapterOptions{FallbackToLegacy: true, FallbackJournal: restartedJournal})
	Ok(t, restarted.ReplayFallbackJournal())
	redis := openRedis(t, srv.Client(t))
	got, err := redis.GetLock(ctx, before.Project, before.Workspace)
	Ok(t, err)
	Assert(t, got == nil, "the lock released during the fallback is still held in Redis by pull #%d", lockPull(got))
	got, err = redis.GetLock(ctx, during.Project, during.Workspace)
	Ok(t, err)
	Assert(t, got != nil && got.Pull.Num == 2, "the lock taken during the fallback is not in Redis")
	Ok(t, restarted.ReplayFallbackJournal()) // nothing left: a no-op
}

func lockPull(l *models.ProjectLock) int {
	if l == nil {
		return 0
	}
	return l.Pull.Num
}
