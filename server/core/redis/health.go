package redis

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/uber-go/tally/v4"
)

// HealthStatus summarises whether Redis can serve locks.
type HealthStatus string

// A ping that succeeds slower than the degraded threshold is degraded; a
// ping that fails is unhealthy at once. Flapping is not smoothed here: a lock
// request made while the ping fails would fail too, and callers that want
// hysteresis can look at ConsecutiveFailures.
const (
	HealthHealthy   HealthStatus = "healthy"
	HealthDegraded  HealthStatus = "degraded"
	HealthUnhealthy HealthStatus = "unhealthy"
)

// Defaults for NewHealthChecker's zero arguments.
const (
	DefaultHealthInterval  = 10 * time.Second
	DefaultDegradedLatency = 100 * time.Millisecond
)

// metricPingLatency times each health-check ping, on the scope given to
// NewHealthChecker. The gauges of health and connections are sampled from
// Status and the client by the enhanced locking metrics.
const metricPingLatency = "redis_ping_latency"

// HealthReport is the outcome of one check.
type HealthReport struct {
	Status              HealthStatus
	Latency             time.Duration
	LastError           string
	CheckedAt           time.Time
	ConsecutiveFailures int
}

// HealthChecker pings Redis periodically and reports transitions.
type HealthChecker struct {
	client          redis.UniversalClient
	interval        time.Duration
	degradedLatency time.Duration
	scope           tally.Scope

	// checkMu serialises checks so each OnChange sees old and new in order.
	checkMu sync.Mutex
	mu      sync.Mutex
	last    HealthReport
	// failedAt is when a lock operation last reported Redis out of reach; a
	// ping that started before it cannot vouch for Redis.
	failedAt  time.Time
	listeners []func(old, new HealthReport)
	started   bool
}

// NewHealthChecker returns a checker that has not run yet; Status reports
// unhealthy until the first check, so nothing trusts Redis before it was
// seen. Zero interval or degradedLatency take the defaults; a nil scope
// means no metrics.
func NewHealthChecker(client redis.UniversalClient, interval, degradedLatency time.Duration, scope tally.Scope) *HealthChecker {
	if interval <= 0 {
		interval = DefaultHealthInterval
	}
	if degradedLatency <= 0 {
		degradedLatency = DefaultDegradedLatency
	}
	if scope == nil {
		scope = tally.NoopScope
	}
	return &HealthChecker{
		client:          client,
		interval:        interval,
		degradedLatency: degradedLatency,
		scope:           scope,
		last:            HealthReport{Status: HealthUnhealthy, LastError: "no health check has run yet"},
	}
}

// OnChange registers fn to run after a check whose status differs from the
// previous one. fn runs on the checking goroutine and must not block.
func (h *HealthChecker) OnChange(fn func(old, new HealthReport)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.listeners = append(h.listeners, fn)
}

// Start checks now and then every interval until ctx is done. Calls after
// the first are no-ops.
func (h *HealthChecker) Start(ctx context.Context) {
	h.mu.Lock()
	if h.started {
		h.mu.Unlock()
		return
	}
	h.started = true
	h.mu.Unlock()

	go func() {
		ticker := time.NewTicker(h.interval)
		defer ticker.Stop()
		for {
			h.Check(ctx)
			select {
			case <-ctx.Done():
				return
			case <-ticker.C:
			}
		}
	}()
}

// Status returns the most recent report.
func (h *HealthChecker) Status() HealthReport {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.last
}

// Check pings Redis now, records the result and returns it. A check never
// outlasts the interval, so a hung server cannot stall the loop.
func (h *HealthChecker) Check(ctx context.Context) HealthReport {
	h.checkMu.Lock()
	defer h.checkMu.Unlock()

	started := time.Now()
	pingCtx, cancel := context.WithTimeout(ctx, h.interval)
	latency, err := h.ping(pingCtx)
	cancel()

	h.mu.Lock()
	old := h.last
	if err == nil && !h.failedAt.Before(started) {
		// A lock operation failed while this ping was under way: its answer
		// may predate the failure, so it cannot clear it.
		h.mu.Unlock()
		return old
	}
	report := HealthReport{Status: HealthHealthy, Latency: latency, CheckedAt: time.Now()}
	switch {
	case err != nil:
		report.Status = HealthUnhealthy
		report.LastError = err.Error()
		report.ConsecutiveFailures = old.ConsecutiveFailures + 1
	case latency > h.degradedLatency:
		report.Status = HealthDegraded
	}
	h.last = report
	listeners := append([]func(old, new HealthReport){}, h.listeners...)
	h.mu.Unlock()

	if err == nil {
		h.scope.Timer(metricPingLatency).Record(latency)
	}
	if old.Status != report.Status {
		for _, fn := range listeners {
			fn(old, report)
		}
	}
	return report
}

// ReportFailure records that a real operation found Redis out of reach, so the
// health says so at once instead of at the next ping; only a ping that starts
// after it can report Redis healthy again. Listeners run as for a check.
func (h *HealthChecker) ReportFailure(err error) {
	h.mu.Lock()
	old := h.last
	now := time.Now()
	h.failedAt = now
	report := HealthReport{Status: HealthUnhealthy, LastError: err.Error(), CheckedAt: now, ConsecutiveFailures: old.ConsecutiveFailures + 1}
	h.last = report
	listeners := append([]func(old, new HealthReport){}, h.listeners...)
	h.mu.Unlock()

	if old.Status != report.Status {
		for _, fn := range listeners {
			fn(old, report)
		}
	}
}

// ping measures a round trip. In a cluster every master must answer: a
// missing master makes a third of the lock keys unavailable, so the slowest
// master is the cluster's latency.
func (h *HealthChecker) ping(ctx context.Context) (time.Duration, error) {
	cluster, ok := h.client.(*redis.ClusterClient)
	if !ok {
		start := time.Now()
		err := h.client.Ping(ctx).Err()
		return time.Since(start), err
	}
	var (
		mu      sync.Mutex
		slowest time.Duration
	)
	err := cluster.ForEachMaster(ctx, func(ctx context.Context, master *redis.Client) error {
		start := time.Now()
		if err := master.Ping(ctx).Err(); err != nil {
			return err
		}
		d := time.Since(start)
		mu.Lock()
		defer mu.Unlock()
		slowest = max(slowest, d)
		return nil
	})
	return slowest, err
}
