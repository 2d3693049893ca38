package server

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	upstream "github.com/runatlantis/atlantis/server"
	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

func redisConfig(addr string) EnhancedLockingConfig {
	cfg := DefaultEnhancedLockingConfig()
	cfg.Enabled = true
	cfg.Backend = BackendRedis
	cfg.Redis.Addrs = []string{addr}
	return cfg
}

// startTestServer builds our server as `atlantis server` would and routes
// requests to it in-process, through upstream's router.
func startTestServer(t *testing.T, userConfig upstream.UserConfig, cfg EnhancedLockingConfig) (*Server, func(method, path string) *httptest.ResponseRecorder) {
	t.Helper()
	srv, err := NewServer(userConfig, testConfig(), cfg)
	Ok(t, err)
	t.Cleanup(func() {
		srv.closeEnhanced()                  // nolint: errcheck
		srv.LocksController.Database.Close() // nolint: errcheck
	})
	srv.registerRoutes()
	srv.SetupRoutes()
	return srv, func(method, path string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, path, nil)
		req.Header.Set("X-Atlantis-Token", userConfig.APISecret)
		rec := httptest.NewRecorder()
		srv.Router.ServeHTTP(rec, req)
		return rec
	}
}

// TestRedisServer_UpstreamComponentsLockInRedis locks and unlocks through
// upstream's own components in the real server and checks Redis each time.
func TestRedisServer_UpstreamComponentsLockInRedis(t *testing.T) {
	redisSrv := redistest.Start(t)
	client := redisSrv.Client(t)
	ctx := context.Background()
	srv, serve := startTestServer(t, testUserConfig(t), redisConfig(redisSrv.Addr))

	project := models.NewProject("org/repo", "dir", "")
	pull := models.PullRequest{Num: 7, Author: "alice"}
	resp, err := srv.Locker.TryLock(project, "default", pull, models.User{Username: "alice"})
	Ok(t, err)
	Assert(t, resp.LockAcquired, "lock not acquired")
	value, err := client.Get(ctx, "pr/org/repo/dir/default/").Result()
	Ok(t, err)
	Assert(t, strings.Contains(value, `"Num":7`), "lock not in Redis under upstream's key: %s", value)

	rec := serve("GET", "/api/locks")
	Equals(t, http.StatusOK, rec.Code)
	var listed struct {
		Locks []struct {
			Name   string
			PullID int `json:",string"`
		}
	}
	Ok(t, json.Unmarshal(rec.Body.Bytes(), &listed))
	Equals(t, 1, len(listed.Locks))
	Equals(t, "org/repo/dir/default/", listed.Locks[0].Name)
	Equals(t, 7, listed.Locks[0].PullID)

	Equals(t, http.StatusOK, serve("GET", "/lock?id=org%252Frepo%252Fdir%252Fdefault%252F").Code)

	Equals(t, http.StatusOK, serve("POST", "/apply/lock").Code)
	Equals(t, int64(1), client.Exists(ctx, "global/apply/lock").Val())
	Equals(t, http.StatusOK, serve("DELETE", "/apply/unlock").Code)
	Equals(t, int64(0), client.Exists(ctx, "global/apply/lock").Val())

	Equals(t, http.StatusOK, serve("DELETE", "/locks?id=org%252Frepo%252Fdir%252Fdefault%252F").Code)
	Equals(t, redis.Nil, client.Get(ctx, "pr/org/repo/dir/default/").Err())
	Equals(t, http.StatusNotFound, serve("GET", "/lock?id=org%252Frepo%252Fdir%252Fdefault%252F").Code)

	// Pull-closed cleanup goes through Locker.UnlockByPull.
	_, err = srv.Locker.TryLock(project, "default", pull, models.User{Username: "alice"})
	Ok(t, err)
	locks, err := srv.Locker.UnlockByPull("org/repo", 7)
	Ok(t, err)
	Equals(t, 1, len(locks))
	Equals(t, redis.Nil, client.Get(ctx, "pr/org/repo/dir/default/").Err())

	rec = serve("GET", "/healthz")
	var health HealthzResponse
	Ok(t, json.Unmarshal(rec.Body.Bytes(), &health))
	Equals(t, EnhancedLockingHealth{Enabled: true, Backend: "redis", Status: "unhealthy", ActiveBackend: "redis",
		NonEnhancedWrites: &backends.NonEnhancedWrites{}}, health.EnhancedLocking)
	Equals(t, http.StatusOK, serve("GET", "/readyz").Code)
}

// TestRedisServer_EnableDisableKeepsLocks restarts the server with enhanced
// locking off and on again on the same data dir and Redis: no lock is lost
// either way.
func TestRedisServer_EnableDisableKeepsLocks(t *testing.T) {
	redisSrv := redistest.Start(t)
	userConfig := testUserConfig(t)
	project := models.NewProject("org/repo", "dir", "")
	user := models.User{Username: "alice"}

	enabled, err := NewServer(userConfig, testConfig(), redisConfig(redisSrv.Addr))
	Ok(t, err)
	_, err = enabled.Locker.TryLock(project, "default", models.PullRequest{Num: 1}, user)
	Ok(t, err)
	Ok(t, enabled.closeEnhanced())
	Ok(t, enabled.LocksController.Database.Close())

	disabled, err := NewServer(userConfig, testConfig(), DefaultEnhancedLockingConfig())
	Ok(t, err)
	lock, err := disabled.Locker.GetLock("org/repo/dir/default/")
	Ok(t, err)
	Assert(t, lock != nil && lock.Pull.Num == 1, "lock taken while enabled is lost after disabling")
	other := models.NewProject("org/repo", "other", "")
	resp, err := disabled.Locker.TryLock(other, "default", models.PullRequest{Num: 2}, user)
	Ok(t, err)
	Assert(t, resp.LockAcquired, "lock not acquired while disabled")
	Ok(t, disabled.LocksController.Database.Close())

	reenabled, err := NewServer(userConfig, testConfig(), redisConfig(redisSrv.Addr))
	Ok(t, err)
	defer reenabled.closeEnhanced()                  // nolint: errcheck
	defer reenabled.LocksController.Database.Close() // nolint: errcheck
	resp, err = reenabled.Locker.TryLock(other, "default", models.PullRequest{Num: 3}, user)
	Ok(t, err)
	Assert(t, !resp.LockAcquired, "lock taken while disabled was not imported")
	Equals(t, 2, resp.CurrLock.Pull.Num)
	locks, err := reenabled.Locker.List()
	Ok(t, err)
	Equals(t, 2, len(locks))
}

// TestRedisServer_UnreachableAtStart names the address and gives up within
// the dial timeout.
func TestRedisServer_UnreachableAtStart(t *testing.T) {
	redisSrv := redistest.Start(t)
	addr := redisSrv.Addr
	redisSrv.Stop()
	_, err := NewServer(testUserConfig(t), testConfig(), redisConfig(addr))
	ErrContains(t, addr, err)
}

// waitForActiveBackend waits until /healthz names want as the active
// backend: "redis", or "legacy-fallback" while the server's health checks
// (watchBackend) see Redis gone.
func waitForActiveBackend(t *testing.T, serve func(method, path string) *httptest.ResponseRecorder, want string) {
	t.Helper()
	activeBackend := func() string {
		var health HealthzResponse
		Ok(t, json.Unmarshal(serve("GET", "/healthz").Body.Bytes(), &health))
		return health.EnhancedLocking.ActiveBackend
	}
	for start := time.Now(); activeBackend() != want; time.Sleep(20 * time.Millisecond) {
		Assert(t, time.Since(start) < 30*time.Second, "active backend is %s, want %s", activeBackend(), want)
	}
}

// TestRedisServer_FallbackFollowsHealth runs the server's own health checks
// against a Redis that goes away and comes back: locks go to BoltDB while it
// is gone and are in Redis once it is back, with no call from the test.
func TestRedisServer_FallbackFollowsHealth(t *testing.T) {
	redisSrv := redistest.Start(t, redistest.WithAppendOnly())
	cfg := redisConfig(redisSrv.Addr)
	cfg.Fallback.Mode = FallbackBoltDB
	cfg.Redis.DialTimeout = 300 * time.Millisecond
	cfg.Performance.HealthCheckInterval = 100 * time.Millisecond
	srv, serve := startTestServer(t, testUserConfig(t), cfg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv.watchBackend(ctx)
	waitForActiveBackend(t, serve, "redis")

	redisSrv.Stop()
	waitForActiveBackend(t, serve, "legacy-fallback")
	project := models.NewProject("org/repo", "during-outage", "")
	resp, err := srv.Locker.TryLock(project, "default", models.PullRequest{Num: 4}, models.User{Username: "alice"})
	Ok(t, err)
	Assert(t, resp.LockAcquired, "no lock during the fallback")
	Equals(t, http.StatusOK, serve("GET", "/readyz").Code)

	redisSrv.Restart()
	waitForActiveBackend(t, serve, "redis")
	value, err := redisSrv.Client(t).Get(context.Background(), "pr/org/repo/during-outage/default/").Result()
	Ok(t, err)
	Assert(t, strings.Contains(value, `"Num":4`), "lock taken during the outage is not in Redis: %s", value)
}
