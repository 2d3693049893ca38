package redis_test

import (
	"context"
	"errors"
	"testing"
	"time"

	. "github.com/runatlantis/atlantis/testing"
	"github.com/uber-go/tally/v4"

	"github.com/atlantis-enhanced/atlantis/server/core/redis"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

func TestHealthChecker_TracksServerRestarts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := redistest.Start(t)
	client := connect(t, redis.Config{Addrs: []string{s.Addr}, DialTimeout: 500 * time.Millisecond})
	scope := tally.NewTestScope("", nil)
	h := redis.NewHealthChecker(client, 300*time.Millisecond, time.Second, scope)

	var transitions []redis.HealthStatus
	h.OnChange(func(old, new redis.HealthReport) {
		transitions = append(transitions, old.Status, new.Status)
	})

	Equals(t, redis.HealthUnhealthy, h.Status().Status)

	r := h.Check(ctx)
	Equals(t, redis.HealthHealthy, r.Status)
	Equals(t, "", r.LastError)
	Equals(t, r, h.Status())
	_, timed := scope.Snapshot().Timers()["redis_ping_latency+"]
	Assert(t, timed, "ping latency timer not recorded")

	s.Stop()
	r = h.Check(ctx)
	Equals(t, redis.HealthUnhealthy, r.Status)
	Equals(t, 1, r.ConsecutiveFailures)
	Assert(t, r.LastError != "", "unhealthy report should carry the error")
	Equals(t, 2, h.Check(ctx).ConsecutiveFailures)

	s.Restart()
	r = h.Check(ctx)
	Equals(t, redis.HealthHealthy, r.Status)
	Equals(t, 0, r.ConsecutiveFailures)

	// Only status changes notify; the second failed check did not.
	Equals(t, []redis.HealthStatus{
		redis.HealthUnhealthy, redis.HealthHealthy,
		redis.HealthHealthy, redis.HealthUnhealthy,
		redis.HealthUnhealthy, redis.HealthHealthy,
	}, transitions)
}

func TestHealthChecker_DegradedWhenSlow(t *testing.T) {
	t.Parallel()
	s := redistest.Start(t)
	client := connect(t, redis.Config{Addrs: []string{s.Addr}})
	// No ping beats a nanosecond, so every successful check is slow.
	h := redis.NewHealthChecker(client, time.Second, time.Nanosecond, nil)
	r := h.Check(context.Background())
	Equals(t, redis.HealthDegraded, r.Status)
	Assert(t, r.Latency > 0, "latency not measured")
}

func TestHealthChecker_StartReportsTransitions(t *testing.T) {
	t.Parallel()
	s := redistest.Start(t)
	client := connect(t, redis.Config{Addrs: []string{s.Addr}, DialTimeout: 200 * time.Millisecond})
	h := redis.NewHealthChecker(client, 50*time.Millisecond, time.Second, tally.NoopScope)
	changes := make(chan redis.HealthReport, 10)
	h.OnChange(func(_, new redis.HealthReport) { changes <- new })

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h.Start(ctx)
	h.Start(ctx) // a second Start must not add a second loop

	next := func() redis.HealthReport {
		t.Helper()
		select {
		case r := <-changes:
			return r
		case <-time.After(5 * time.Second):
			t.Fatal("no health transition within 5s")
			return redis.HealthReport{}
		}
	}
	Equals(t, redis.HealthHealthy, next().Status)
	s.Stop()
	Equals(t, redis.HealthUnhealthy, next().Status)
	s.Restart()
	Equals(t, redis.HealthHealthy, next().Status)

	cancel()
	time.Sleep(150 * time.Millisecond)
	checked := h.Status().CheckedAt
	time.Sleep(200 * time.Millisecond)
	Equals(t, checked, h.Status().CheckedAt)
}

func TestHealthChecker_ClusterNeedsEveryMaster(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t)
	client := connect(t, redis.Config{Mode: redis.ModeCluster, Addrs: c.Addrs, DialTimeout: 300 * time.Millisecond})
	h := redis.NewHealthChecker(client, time.Second, time.Second, nil)
	ctx := context.Background()

	Equals(t, redis.HealthHealthy, h.Check(ctx).Status)

	c.Nodes[1].Stop()
	r := h.Check(ctx)
	Equals(t, redis.HealthUnhealthy, r.Status)
	Assert(t, r.LastError != "", "unhealthy report should carry the error")

	c.Nodes[1].Restart()
	Equals(t, redis.HealthHealthy, h.Check(ctx).Status)
}

func TestHealthChecker_Sentinel(t *testing.T) {
	t.Parallel()
	s := redistest.StartSentinel(t)
	client := connect(t, redis.Config{Mode: redis.ModeSentinel, Addrs: s.SentinelAddrs, SentinelMaster: s.MasterName})
	h := redis.NewHealthChecker(client, time.Second, time.Second, nil)
	Equals(t, redis.HealthHealthy, h.Check(context.Background()).Status)
}

// TestHealthChecker_FailureReportedByAnOperation: a lock operation that found
// Redis out of reach makes the health unhealthy at once, with listeners told;
// a ping that was under way before it cannot clear it, a later one can.
func TestHealthChecker_FailureReportedByAnOperation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := redistest.Start(t)
	client := connect(t, redis.Config{Addrs: []string{s.Addr}})
	h := redis.NewHealthChecker(client, 10*time.Second, 10*time.Second, nil)
	var transitions []redis.HealthStatus
	h.OnChange(func(_, new redis.HealthReport) { transitions = append(transitions, new.Status) })
	Equals(t, redis.HealthHealthy, h.Check(ctx).Status)

	// Redis holds every client's commands for a moment: a ping sent now
	// answers only after the failure below is reported.
	Ok(t, s.Client(t).Do(ctx, "CLIENT", "PAUSE", "500", "ALL").Err())
	pinged := make(chan redis.HealthReport, 1)
	go func() { pinged <- h.Check(ctx) }()
	time.Sleep(50 * time.Millisecond)

	h.ReportFailure(errors.New("dial tcp: connection refused"))
	Equals(t, redis.HealthUnhealthy, h.Status().Status)
	Equals(t, "dial tcp: connection refused", h.Status().LastError)
	Equals(t, redis.HealthUnhealthy, (<-pinged).Status)
	Equals(t, redis.HealthUnhealthy, h.Status().Status)

	Equals(t, redis.HealthHealthy, h.Check(ctx).Status)
	Equals(t, []redis.HealthStatus{redis.HealthHealthy, redis.HealthUnhealthy, redis.HealthHealthy}, transitions)
}
