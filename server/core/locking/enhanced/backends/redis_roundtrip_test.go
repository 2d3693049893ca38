package backends

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// TestAcquireReleaseRoundTrips: taking a free lock and releasing it is two
// round trips: the native SET NX GET with the check for the pull's own queue
// entry and the two index writes pipelined behind it (the shard set is
// written once per process), then the release script.
//
// How it counts: a hook on the client records each round trip and the
// commands in it. INFO commandstats (after CONFIG RESETSTAT, read before
// anything else runs) cannot count round trips, and it also counts the
// commands scripts run inside Redis (the MGET and SET in release.lua), so it
// serves to confirm the server side: exactly one EVALSHA, no EVAL (no
// NOSCRIPT fallback) and, at top level, nothing the client did not send.
func TestAcquireReleaseRoundTrips(t *testing.T) {
	for name, client := range map[string]func(t *testing.T) redis.UniversalClient{
		"standalone": func(t *testing.T) redis.UniversalClient { return redistest.Start(t).Client(t) },
		"cluster":    func(t *testing.T) redis.UniversalClient { return redistest.StartCluster(t).Client(t) },
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			c := client(t)
			r := newTestRedis(t, c, RedisOptions{})
			lock := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
			pair := func() {
				acquired, _, err := r.TryLock(ctx, enhancedtest.Request(lock))
				Ok(t, err)
				Assert(t, acquired, "lock not acquired")
				released, err := r.UnlockIfOwnedByPull(ctx, lock.Project, lock.Workspace, lock.Pull.Num)
				Ok(t, err)
				Assert(t, released != nil, "lock not released")
			}
			pair() // loads the scripts, as the first calls after any Redis restart do

			redistest.ResetStats(t, c)
			hook := &redistest.RoundTrips{}
			c.AddHook(hook)
			pair()
			trips := hook.Take()
			counts := redistest.CommandCount(t, c)

			t.Logf("%s: round trips %v; server commandstats %v", name, trips, counts)
			Equals(t, [][]string{{"set", "hexists", "sadd", "sadd"}, {"evalsha"}}, trips)
			Equals(t, int64(1), counts["evalsha"])
			Equals(t, int64(0), counts["eval"])
			// The release script reads its retry record and the lock in one
			// MGET; the client sends no read of its own.
			Equals(t, int64(1), counts["mget"])
			Equals(t, int64(0), counts["get"])
		})
	}
}
