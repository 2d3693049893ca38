package metrics_test

import (
	"context"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	. "github.com/runatlantis/atlantis/testing"
	tally "github.com/uber-go/tally/v4"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/metrics"
	redisclient "github.com/atlantis-enhanced/atlantis/server/core/redis"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

func gauges(scope tally.TestScope) map[string]float64 {
	out := map[string]float64{}
	for k, g := range scope.Snapshot().Gauges() {
		out[k] = g.Value()
	}
	return out
}

func TestHealthValue(t *testing.T) {
	for status, want := range map[redisclient.HealthStatus]float64{
		redisclient.HealthHealthy:   1,
		redisclient.HealthDegraded:  0.5,
		redisclient.HealthUnhealthy: 0,
		"":                          0,
	} {
		Equals(t, want, metrics.HealthValue(status))
	}
}

// An in-process backend without sources reports healthy, no fallback, and
// no series of a pool or a queue it does not have.
func TestSampler_WithoutSources(t *testing.T) {
	scope := tally.NewTestScope("", nil)
	metrics.NewSampler(scope, metrics.Sources{}, time.Minute, nil).Sample()
	Equals(t, map[string]float64{"backend_health_status+": 1, "fallback_active+": 0}, gauges(scope))
}

// The health gauge follows a real health checker through a Redis restart,
// and the fallback gauge the adapter's mode.
func TestSampler_FollowsHealthAndFallback(t *testing.T) {
	srv := redistest.Start(t)
	opts := srv.Options()
	opts.DialTimeout, opts.MaxRetries = 200*time.Millisecond, -1
	client := goredis.NewClient(opts)
	t.Cleanup(func() { _ = client.Close() })
	health := redisclient.NewHealthChecker(client, time.Second, time.Second, nil)
	fallback := false
	scope := tally.NewTestScope("", nil)
	s := metrics.NewSampler(scope, metrics.Sources{
		Health:   func() redisclient.HealthStatus { return health.Status().Status },
		Fallback: func() bool { return fallback },
	}, time.Minute, nil)
	ctx := context.Background()

	s.Sample()
	Equals(t, 0.0, gauges(scope)["backend_health_status+"]) // not checked yet: not trusted
	health.Check(ctx)
	s.Sample()
	Equals(t, 1.0, gauges(scope)["backend_health_status+"])

	srv.Stop()
	health.Check(ctx)
	fallback = true
	s.Sample()
	Equals(t, map[string]float64{"backend_health_status+": 0, "fallback_active+": 1}, gauges(scope))

	srv.Restart()
	health.Check(ctx)
	fallback = false
	s.Sample()
	Equals(t, map[string]float64{"backend_health_status+": 1, "fallback_active+": 0}, gauges(scope))
}

// The pool gauges count the connections in use and idle, and the counter
// the requests that found no free connection in time.
func TestSampler_ReadsThePool(t *testing.T) {
	srv := redistest.Start(t)
	opts := srv.Options()
	opts.PoolSize, opts.PoolTimeout, opts.MaxRetries = 1, 100*time.Millisecond, -1
	client := goredis.NewClient(opts)
	t.Cleanup(func() { _ = client.Close() })
	ctx := context.Background()
	Ok(t, client.Ping(ctx).Err())
	scope := tally.NewTestScope("", nil)
	s := metrics.NewSampler(scope, metrics.Sources{Pool: client}, time.Minute, nil)
	s.Sample()
	Equals(t, 0.0, gauges(scope)["redis_connections_active+"])
	Equals(t, 1.0, gauges(scope)["redis_connections_idle+"])

	// A blocking pop holds the pool's one connection until the list gets an
	// element.
	popped := make(chan error, 1)
	go func() { popped <- client.BLPop(ctx, 0, "sampler-test-list").Err() }()
	for s.Sample(); gauges(scope)["redis_connections_active+"] < 1; s.Sample() {
		time.Sleep(10 * time.Millisecond)
	}
	Equals(t, 0.0, gauges(scope)["redis_connections_idle+"])
	err := client.Ping(ctx).Err()
	Assert(t, err != nil, "a ping with the pool's only connection busy should time out")
	s.Sample()
	Equals(t, int64(1), counters(scope)["redis_pool_timeouts_total+"])
	s.Sample()
	Equals(t, int64(1), counters(scope)["redis_pool_timeouts_total+"]) // counted once

	Ok(t, srv.Client(t).LPush(ctx, "sampler-test-list", "x").Err())
	Ok(t, <-popped)
	s.Sample()
	Equals(t, 0.0, gauges(scope)["redis_connections_active+"])
}

// The queue depth is the durable entries in every queue of the backend,
// whichever replica queued them.
func TestSampler_CountsTheQueuedEntries(t *testing.T) {
	srv := redistest.Start(t)
	backend, err := backends.NewRedis(srv.Client(t), backends.RedisOptions{})
	Ok(t, err)
	t.Cleanup(func() { _ = backend.Close() })
	scope := tally.NewTestScope("", nil)
	s := metrics.NewSampler(scope, metrics.Sources{Queues: backend}, time.Minute, nil)
	ctx := context.Background()
	s.SampleQueues(ctx)
	Equals(t, 0.0, gauges(scope)["lock_queue_depth+"])

	for _, dir := range []string{"a", "b"} {
		acquired, _, err := backend.TryLock(ctx, enhanced.LockRequest{Lock: enhancedtest.NewLock("org/repo", dir, "default", "", 1)})
		Ok(t, err)
		Assert(t, acquired, "lock %s not taken", dir)
	}
	for _, q := range []struct {
		dir  string
		pull int
	}{{"a", 2}, {"a", 3}, {"b", 2}} {
		res, err := backend.Enqueue(ctx, enhancedtest.QueueRequest(enhancedtest.NewLock("org/repo", q.dir, "default", "", q.pull), enhanced.PriorityNormal, time.Hour))
		Ok(t, err)
		Assert(t, res.Queued, "pull %d not queued for %s", q.pull, q.dir)
	}
	s.SampleQueues(ctx)
	Equals(t, 3.0, gauges(scope)["lock_queue_depth+"])

	_, err = backend.Unlock(ctx, enhancedtest.NewLock("org/repo", "a", "default", "", 1).Project, "default")
	Ok(t, err)
	s.SampleQueues(ctx)
	Equals(t, 2.0, gauges(scope)["lock_queue_depth+"]) // pull 2 was handed a

	// Out of reach: the last depth stays.
	srv.Stop()
	s.SampleQueues(ctx)
	Equals(t, 2.0, gauges(scope)["lock_queue_depth+"])
}
