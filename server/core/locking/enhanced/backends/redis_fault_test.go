package backends

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// A value at a lock key that is not a lock is reported, naming the key, and
// left as it is by every operation whose right depends on who holds it; List
// leaves it out and lists the others
// (TestListReportsAnUndecodableLockAndListsTheOthers). Unlock, by key as the
// locks page asks, needs no holder: it frees it.
func TestCorruptLockIsReportedAndKept(t *testing.T) {
	client := redistest.Start(t).Client(t)
	ctx := context.Background()
	lock := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	key := "pr/" + models.GenerateLockKey(lock.Project, lock.Workspace)

	for _, value := range []string{`{"Project": {`, `not json`, `{"Pull": "x"}`, `[]`} {
		t.Run(value, func(t *testing.T) {
			r := newTestRedis(t, client, RedisOptions{})
			Ok(t, client.Set(ctx, key, value, 0).Err())
			Ok(t, client.SAdd(ctx, r.keys.forLockKey(key).shard, key).Err())
			Ok(t, client.SAdd(ctx, r.keys.shards(), r.keys.forLockKey(key).shard).Err())
			index, _ := r.keys.pull("org/repo", 1)
			Ok(t, client.SAdd(ctx, index, key).Err())

			ops := map[string]func() error{
				"TryLock": func() error {
					_, _, err := r.TryLock(ctx, enhancedtest.Request(lock))
					return err
				},
				"TryLockWithTimeout": func() error {
					_, _, err := r.TryLockWithTimeout(ctx, enhancedtest.Request(lock), time.Second)
					return err
				},
				"GetLock": func() error {
					_, err := r.GetLock(ctx, lock.Project, lock.Workspace)
					return err
				},
				"UnlockIfOwnedByPull": func() error {
					_, err := r.UnlockIfOwnedByPull(ctx, lock.Project, lock.Workspace, 1)
					return err
				},
				"UnlockByPull": func() error {
					_, err := r.UnlockByPull(ctx, "org/repo", 1)
					return err
				},
			}
			for name, op := range ops {
				err := op()
				Assert(t, errors.Is(err, enhanced.ErrCorruptLock), "%s: want ErrCorruptLock, got %v", name, err)
				Assert(t, strings.Contains(err.Error(), key), "%s: error does not name the key: %v", name, err)
				stored, getErr := client.Get(ctx, key).Result()
				Ok(t, getErr)
				Equals(t, value, stored)
			}
			listed, err := r.List(ctx)
			Ok(t, err)
			Equals(t, 0, len(listed))

			released, err := r.Unlock(ctx, lock.Project, lock.Workspace)
			Ok(t, err)
			Equals(t, &models.ProjectLock{Project: lock.Project, Workspace: lock.Workspace}, released)
			Equals(t, int64(0), client.Exists(ctx, key).Val())
		})
	}
}

// With Redis down every operation fails closed with ErrBackendUnavailable,
// and works again once Redis is back, with the locks it persisted.
func TestRedisUnavailable(t *testing.T) {
	srv := redistest.Start(t, redistest.WithAppendOnly())
	ctx := context.Background()
	// Without retries, each failing call returns at once.
	opts := srv.Options()
	opts.MaxRetries = -1
	opts.DialerRetries = 1
	client := redis.NewClient(opts)
	t.Cleanup(func() { _ = client.Close() })
	r := newTestRedis(t, client, RedisOptions{})
	held := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	acquired, _, err := r.TryLock(ctx, enhancedtest.Request(held))
	Ok(t, err)
	Assert(t, acquired, "lock not acquired")

	srv.Stop()
	other := enhancedtest.NewLock("org/repo", "other", "default", "", 2)
	ops := map[string]func() error{
		"TryLock": func() error {
			_, _, err := r.TryLock(ctx, enhancedtest.Request(other))
			return err
		},
		"TryLockWithTimeout": func() error {
			_, _, err := r.TryLockWithTimeout(ctx, enhancedtest.Request(other), time.Second)
			return err
		},
		"Unlock": func() error {
			_, err := r.Unlock(ctx, held.Project, held.Workspace)
			return err
		},
		"UnlockIfOwnedByPull": func() error {
			_, err := r.UnlockIfOwnedByPull(ctx, held.Project, held.Workspace, 1)
			return err
		},
		"GetLock": func() error {
			_, err := r.GetLock(ctx, held.Project, held.Workspace)
			return err
		},
		"List": func() error {
			_, err := r.List(ctx)
			return err
		},
		"UnlockByPull": func() error {
			_, err := r.UnlockByPull(ctx, "org/repo", 1)
			return err
		},
		"LockCommand": func() error {
			_, err := r.LockCommand(ctx, command.Apply, time.Now())
			return err
		},
		"UnlockCommand": func() error { return r.UnlockCommand(ctx, command.Apply) },
		"CheckCommandLock": func() error {
			_, err := r.CheckCommandLock(ctx, command.Apply)
			return err
		},
		"Ping":                  func() error { return r.Ping(ctx) },
		"ScanForUnindexedLocks": func() error { _, err := r.ScanForUnindexedLocks(ctx); return err },
	}
	for name, op := range ops {
		err := op()
		Assert(t, errors.Is(err, enhanced.ErrBackendUnavailable), "%s: want ErrBackendUnavailable, got %v", name, err)
	}

	srv.Restart()
	// After failed dials go-redis hands out the last dial error while it
	// redials in the background, about once a second.
	deadline := time.Now().Add(10 * time.Second)
	for r.Ping(ctx) != nil && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	Ok(t, r.Ping(ctx))
	got, err := r.GetLock(ctx, held.Project, held.Workspace)
	Ok(t, err)
	Assert(t, got != nil, "lock lost across the restart")
	enhancedtest.EqualLocks(t, held, *got)
	// Redis forgot the scripts: the first calls load them again.
	acquired, _, err = r.TryLock(ctx, enhancedtest.Request(other))
	Ok(t, err)
	Assert(t, acquired, "lock not acquired after the restart")
	released, err := r.UnlockByPull(ctx, "org/repo", 1)
	Ok(t, err)
	enhancedtest.EqualLockSets(t, []models.ProjectLock{held}, released)
}
