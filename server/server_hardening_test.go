package server

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	upstream "github.com/runatlantis/atlantis/server"
	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/legacydb"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// withUpstreamRedis points upstream's own database (--locking-db-type=redis)
// at host:port.
func withUpstreamRedis(t *testing.T, userConfig upstream.UserConfig, host, addr string) upstream.UserConfig {
	_, port := hostPort(t, addr)
	userConfig.LockingDBType = BackendRedis
	userConfig.RedisHost = host
	userConfig.RedisPort = port
	return userConfig
}

func healthz(t *testing.T, serve func(method, path string) *httptest.ResponseRecorder) HealthzResponse {
	t.Helper()
	var health HealthzResponse
	Ok(t, json.Unmarshal(serve("GET", "/healthz").Body.Bytes(), &health))
	return health
}

// TestRedisServer_SharedKeysDetectedAcrossNames: upstream's database named by
// hostname, ours by IP, is one Redis: nothing is mirrored into our own keys.
func TestRedisServer_SharedKeysDetectedAcrossNames(t *testing.T) {
	redisSrv := redistest.Start(t)
	userConfig := withUpstreamRedis(t, testUserConfig(t), "localhost", redisSrv.Addr)
	srv, _ := startTestServer(t, userConfig, redisConfig(redisSrv.Addr))
	Assert(t, srv.backend.sharedWithLegacy, "upstream's database at localhost was not recognised as the Redis at %s", redisSrv.Addr)
	Assert(t, !srv.backend.separateFromLegacy, "locks would be mirrored into the keys the backend writes")
}

// TestRedisServer_HealthzAnswersWhileAWaitIsPending: with the fallback and a
// wait timeout, /healthz and /readyz answer at once while a request waits for
// a lock and the health checker reports every few milliseconds, and the
// waiting pull gets the lock when it is released.
func TestRedisServer_HealthzAnswersWhileAWaitIsPending(t *testing.T) {
	redisSrv := redistest.Start(t)
	cfg := redisConfig(redisSrv.Addr)
	cfg.Fallback.Mode = FallbackBoltDB
	cfg.Features.WaitTimeout = 20 * time.Second
	// Checks run many times during the wait; each ping may take an interval,
	// so a shorter one would time out on a loaded machine and fall back.
	cfg.Performance.HealthCheckInterval = 50 * time.Millisecond
	srv, serve := startTestServer(t, testUserConfig(t), cfg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv.watchBackend(ctx)

	project := models.NewProject("org/repo", "dir", "")
	resp, err := srv.Locker.TryLock(project, "default", models.PullRequest{Num: 1}, models.User{Username: "alice"})
	Ok(t, err)
	Assert(t, resp.LockAcquired, "lock not acquired")
	waited := make(chan bool, 1)
	go func() {
		resp, err := srv.Locker.TryLock(project, "default", models.PullRequest{Num: 2}, models.User{Username: "bob"})
		waited <- err == nil && resp.LockAcquired
	}()
	enhancedtest.AwaitQueue(t, srv.backend.Backend, enhancedtest.NewLock("org/repo", "dir", "default", "", 1), 1)

	var slowest time.Duration
	for range 50 {
		for _, path := range []string{"/healthz", "/readyz"} {
			start := time.Now()
			rec := serve("GET", path)
			slowest = max(slowest, time.Since(start))
			Equals(t, http.StatusOK, rec.Code)
		}
		select {
		case got := <-waited:
			t.Fatalf("the wait ended (acquired=%v) before the lock was released", got)
		case <-time.After(5 * time.Millisecond):
		}
	}
	t.Logf("slowest /healthz or /readyz answer while a wait was pending: %s", slowest)
	_, err = srv.Locker.UnlockIfOwnedByPull(project, "default", 1)
	Ok(t, err)
	Assert(t, <-waited, "the waiting pull did not get the released lock")
}

// TestRedisServer_HealthReflectsAFailedOperationAtOnce: a lock operation that
// finds Redis gone makes /healthz say so at once, without waiting for the
// next ping; only a ping brings it back.
func TestRedisServer_HealthReflectsAFailedOperationAtOnce(t *testing.T) {
	redisSrv := redistest.Start(t, redistest.WithAppendOnly())
	cfg := redisConfig(redisSrv.Addr)
	cfg.Redis.DialTimeout = 300 * time.Millisecond
	cfg.Performance.HealthCheckInterval = time.Hour
	srv, serve := startTestServer(t, testUserConfig(t), cfg)
	srv.backend.health.Check(context.Background())
	Equals(t, "healthy", healthz(t, serve).EnhancedLocking.Status)

	redisSrv.Stop()
	_, err := srv.Locker.TryLock(models.NewProject("org/repo", "dir", ""), "default", models.PullRequest{Num: 1}, models.User{Username: "alice"})
	ErrContains(t, "redis is unreachable", err)
	Equals(t, "unhealthy", healthz(t, serve).EnhancedLocking.Status)

	redisSrv.Restart()
	deadline := time.Now().Add(15 * time.Second)
	for srv.backend.health.Check(context.Background()).Status != "healthy" {
		Assert(t, time.Now().Before(deadline), "Redis never answered a ping again")
		time.Sleep(50 * time.Millisecond)
	}
	Equals(t, "healthy", healthz(t, serve).EnhancedLocking.Status)
}

// TestRedisServer_ReportsNonEnhancedWrites: a lock an upstream replica wrote
// on the same Redis shows in /healthz once an enhanced replica reads it.
func TestRedisServer_ReportsNonEnhancedWrites(t *testing.T) {
	redisSrv := redistest.Start(t)
	host, port := hostPort(t, redisSrv.Addr)
	srv, serve := startTestServer(t, withUpstreamRedis(t, testUserConfig(t), host, redisSrv.Addr), redisConfig(redisSrv.Addr))
	Equals(t, int64(0), healthz(t, serve).EnhancedLocking.NonEnhancedWrites.Locks)

	upstreamReplica := upstreamRedisAt(t, host, port, 0)
	acquired, _, err := upstreamReplica.TryLock(enhancedtest.NewLock("org/repo", "dir", "default", "", 5))
	Ok(t, err)
	Assert(t, acquired, "upstream could not lock")
	_, err = srv.Locker.TryLock(models.NewProject("org/repo", "dir", ""), "default", models.PullRequest{Num: 6}, models.User{Username: "bob"})
	Ok(t, err)

	seen := healthz(t, serve).EnhancedLocking.NonEnhancedWrites
	Equals(t, int64(1), seen.Locks)
	Equals(t, "pr/org/repo/dir/default/", seen.LastKey)
}

// TestRedisServer_StartsWithoutScanning: start-up costs O(locks), however big
// the Redis: no SCAN, and a lock whose per-pull index entry was lost is in
// its index again.
func TestRedisServer_StartsWithoutScanning(t *testing.T) {
	ctx := context.Background()
	redisSrv := redistest.Start(t)
	client := redisSrv.Client(t)
	r, err := backends.NewRedis(client, backends.RedisOptions{})
	Ok(t, err)
	held := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	acquired, _, err := r.TryLock(ctx, enhancedtest.Request(held))
	Ok(t, err)
	Assert(t, acquired, "lock not acquired")
	Ok(t, client.Del(ctx, "pull{org/repo::1}").Err())
	pipe := client.Pipeline()
	for i := range 20000 {
		pipe.Set(ctx, "unrelated:"+strconv.Itoa(i), "x", 0)
	}
	_, err = pipe.Exec(ctx)
	Ok(t, err)

	redistest.ResetStats(t, client)
	startTestServer(t, testUserConfig(t), redisConfig(redisSrv.Addr))
	Equals(t, int64(0), redistest.CommandCount(t, client)["scan"])
	Assert(t, client.SIsMember(ctx, "pull{org/repo::1}", "pr/org/repo/dir/default/").Val(), "the lost per-pull index entry was not repaired")
}

// TestRedisServer_IndexesUpstreamLocksInTheBackground: where upstream
// replicas share the keys, their locks, which carry no index, are found by a
// background scan, not at start-up.
func TestRedisServer_IndexesUpstreamLocksInTheBackground(t *testing.T) {
	ctx := context.Background()
	redisSrv := redistest.Start(t)
	client := redisSrv.Client(t)
	host, port := hostPort(t, redisSrv.Addr)
	srv, _ := startTestServer(t, withUpstreamRedis(t, testUserConfig(t), host, redisSrv.Addr), redisConfig(redisSrv.Addr))
	upstreamReplica := upstreamRedisAt(t, host, port, 0)
	acquired, _, err := upstreamReplica.TryLock(enhancedtest.NewLock("org/repo", "dir", "default", "", 5))
	Ok(t, err)
	Assert(t, acquired, "upstream could not lock")

	watchCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	srv.watchBackend(watchCtx)
	deadline := time.Now().Add(10 * time.Second)
	for !client.SIsMember(ctx, "pull{org/repo::5}", "pr/org/repo/dir/default/").Val() {
		Assert(t, time.Now().Before(deadline), "the background scan did not index upstream's lock")
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRedisServer_RestartDuringFallbackReplays: the replica stops during a
// fallback. At the next start the locks released meanwhile are free in Redis
// and those taken meanwhile are held there.
func TestRedisServer_RestartDuringFallbackReplays(t *testing.T) {
	ctx := context.Background()
	redisSrv := redistest.Start(t, redistest.WithAppendOnly())
	userConfig := testUserConfig(t)
	cfg := redisConfig(redisSrv.Addr)
	cfg.Fallback.Mode = FallbackBoltDB
	cfg.Redis.DialTimeout = 300 * time.Millisecond
	user := models.User{Username: "alice"}
	before := models.NewProject("org/repo", "before", "")
	during := models.NewProject("org/repo", "during", "")

	first, err := NewServer(userConfig, testConfig(), cfg)
	Ok(t, err)
	resp, err := first.Locker.TryLock(before, "default", models.PullRequest{Num: 1}, user)
	Ok(t, err)
	Assert(t, resp.LockAcquired, "lock not acquired")
	redisSrv.Stop()
	first.Adapter.BackendHealthChanged(false)
	_, err = first.Locker.UnlockIfOwnedByPull(before, "default", 1)
	Ok(t, err)
	resp, err = first.Locker.TryLock(during, "default", models.PullRequest{Num: 2}, user)
	Ok(t, err)
	Assert(t, resp.LockAcquired, "the fallback did not grant a free lock")
	first.closeEnhanced()                  // nolint: errcheck
	first.LocksController.Database.Close() // nolint: errcheck

	redisSrv.Restart()
	startTestServer(t, userConfig, cfg)
	client := redisSrv.Client(t)
	Assert(t, client.Exists(ctx, "pr/org/repo/before/default/").Val() == 0, "the lock released during the fallback is still held in Redis")
	value := client.Get(ctx, "pr/org/repo/during/default/").Val()
	Assert(t, strings.Contains(value, `"Num":2`), "the lock taken during the fallback is not in Redis: %q", value)
}

// TestRedisServer_StartsDespiteAnIndexItCannotRepair: an index that cannot
// be repaired (here a corrupt value at an indexed lock key) is reported and
// start-up goes on.
func TestRedisServer_StartsDespiteAnIndexItCannotRepair(t *testing.T) {
	ctx := context.Background()
	redisSrv := redistest.Start(t)
	client := redisSrv.Client(t)
	Ok(t, client.Set(ctx, "pr/org/repo/dir/default/", "not a lock", 0).Err())
	Ok(t, client.SAdd(ctx, "locks", "pr/org/repo/dir/default/").Err())
	Ok(t, client.SAdd(ctx, "locks:shards", "locks").Err())

	srv, _ := startTestServer(t, testUserConfig(t), redisConfig(redisSrv.Addr))
	resp, err := srv.Locker.TryLock(models.NewProject("org/repo", "other", ""), "default", models.PullRequest{Num: 1}, models.User{Username: "alice"})
	Ok(t, err)
	Assert(t, resp.LockAcquired, "no lock after a start with an index it could not repair")
}

// TestRedisServer_RollbackCopiesTheFleetsLocks: two replicas, each with its
// own BoltDB legacy database. Replica A restarts with enhanced locking off:
// its legacy database then holds the lock replica B took too. While off it
// releases that lock and takes another; restarting off again brings nothing
// back from Redis, and turning enhanced locking on again releases in Redis
// what was released meanwhile and imports what was taken.
func TestRedisServer_RollbackCopiesTheFleetsLocks(t *testing.T) {
	ctx := context.Background()
	redisSrv := redistest.Start(t)
	client := redisSrv.Client(t)
	on := redisConfig(redisSrv.Addr)
	off := on
	off.Enabled = false
	user := models.User{Username: "alice"}
	byA := models.NewProject("org/repo", "by-a", "")
	byB := models.NewProject("org/repo", "by-b", "")
	whileOff := models.NewProject("org/repo", "while-off", "")
	configA, configB := testUserConfig(t), testUserConfig(t)

	start := func(userConfig upstream.UserConfig, cfg EnhancedLockingConfig) *Server {
		t.Helper()
		srv, err := NewServer(userConfig, testConfig(), cfg)
		Ok(t, err)
		return srv
	}
	stop := func(srv *Server) {
		t.Helper()
		Ok(t, srv.closeEnhanced())
		Ok(t, srv.LocksController.Database.Close())
	}
	lock := func(srv *Server, p models.Project, pull int) {
		t.Helper()
		resp, err := srv.Locker.TryLock(p, "default", models.PullRequest{Num: pull, BaseRepo: models.Repo{FullName: "org/repo"}}, user)
		Ok(t, err)
		Assert(t, resp.LockAcquired, "lock on %s not acquired", p.Path)
	}
	holders := func(srv *Server) map[string]int {
		t.Helper()
		locks, err := srv.Locker.List()
		Ok(t, err)
		out := map[string]int{}
		for _, l := range locks {
			out[l.Project.Path] = l.Pull.Num
		}
		return out
	}

	a, b := start(configA, on), start(configB, on)
	lock(a, byA, 1)
	lock(b, byB, 2)
	stop(a)
	stop(b)

	a = start(configA, off)
	Equals(t, map[string]int{"by-a": 1, "by-b": 2}, holders(a))
	_, err := a.Locker.UnlockByPull("org/repo", 2)
	Ok(t, err)
	lock(a, whileOff, 3)
	stop(a)

	a = start(configA, off)
	Equals(t, map[string]int{"by-a": 1, "while-off": 3}, holders(a))
	stop(a)

	a = start(configA, on)
	defer stop(a)
	Equals(t, map[string]int{"by-a": 1, "while-off": 3}, holders(a))
	Equals(t, int64(0), client.Exists(ctx, "pr/org/repo/by-b/default/").Val())
}

// TestRedisServer_RollbackWithRedisDown: a start with enhanced locking off
// that cannot reach Redis still makes the legacy database the truth, so a
// later start with Redis back copies nothing over what changed meanwhile.
func TestRedisServer_RollbackWithRedisDown(t *testing.T) {
	redisSrv := redistest.Start(t)
	userConfig := testUserConfig(t)
	off := redisConfig(redisSrv.Addr)
	off.Enabled = false
	off.Redis.DialTimeout = 300 * time.Millisecond
	seed, err := NewServer(userConfig, testConfig(), redisConfig(redisSrv.Addr))
	Ok(t, err)
	resp, err := seed.Locker.TryLock(models.NewProject("org/repo", "held", ""), "default", models.PullRequest{Num: 1}, models.User{Username: "alice"})
	Ok(t, err)
	Assert(t, resp.LockAcquired, "lock not acquired")
	Ok(t, seed.closeEnhanced())
	Ok(t, seed.LocksController.Database.Close())

	redisSrv.Stop()
	down, err := NewServer(userConfig, testConfig(), off)
	Ok(t, err)
	_, err = down.Locker.UnlockByPull("org/repo", 1) // released while enhanced locking is off
	Ok(t, err)
	synced, id, err := legacydb.SyncedAt(down.LocksController.Database)
	Ok(t, err)
	Assert(t, !synced.IsZero(), "no marker: a later start would copy the frozen Redis")
	Equals(t, "", id)
	Ok(t, down.LocksController.Database.Close())

	redisSrv.Restart()
	again, err := NewServer(userConfig, testConfig(), off)
	Ok(t, err)
	defer again.LocksController.Database.Close() // nolint: errcheck
	locks, err := again.Locker.List()
	Ok(t, err)
	Equals(t, 0, len(locks))
}
