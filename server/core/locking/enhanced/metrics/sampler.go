package metrics

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/logging"
	tally "github.com/uber-go/tally/v4"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	redisclient "github.com/atlantis-enhanced/atlantis/server/core/redis"
)

// PoolStatser is a Redis client; go-redis's clients of every mode are.
type PoolStatser interface {
	PoolStats() *redis.PoolStats
}

// QueueLister reads the queues that have durable entries, as
// enhanced.QueueBackend does.
type QueueLister interface {
	Queues(ctx context.Context) ([]enhanced.LockQueue, error)
}

// Sources are what the Sampler reads. A nil source leaves its series out,
// except Health (nil: always healthy, as an in-process backend is) and
// Fallback (nil: never).
type Sources struct {
	// Health is the backend's health as last checked; it must not block.
	Health func() redisclient.HealthStatus
	// Fallback says whether lock operations go to the legacy database now;
	// it must not block.
	Fallback func() bool
	// Pool is the Redis client, for its connection pool.
	Pool PoolStatser
	// Queues are the durable queues, for their depth.
	Queues QueueLister
}

// queueReadTimeout bounds one read of the queues.
const queueReadTimeout = 10 * time.Second

// Sampler keeps the gauges: the cheap ones (health, fallback, the pool) at
// every Sample, the queue depth, which reads the backend, at every interval
// of Run.
type Sampler struct {
	src      Sources
	interval time.Duration
	logger   logging.SimpleLogging

	health, fallback tally.Gauge
	active, idle     tally.Gauge
	timeouts         tally.Counter
	depth            tally.Gauge

	// mu serialises Sample, which Run and health listeners both call, so
	// each pool timeout is counted once.
	mu           sync.Mutex
	lastTimeouts uint32
}

// NewSampler creates the series of the sources given on scope; Run keeps
// them up to date every interval.
func NewSampler(scope tally.Scope, src Sources, interval time.Duration, logger logging.SimpleLogging) *Sampler {
	if logger == nil {
		logger = enhanced.NopLogger{}
	}
	s := &Sampler{
		src:      src,
		interval: interval,
		logger:   logger,
		health:   scope.Gauge(BackendHealthStatus),
		fallback: scope.Gauge(FallbackActive),
	}
	if src.Pool != nil {
		s.active = scope.Gauge(RedisConnectionsActive)
		s.idle = scope.Gauge(RedisConnectionsIdle)
		s.timeouts = scope.Counter(RedisPoolTimeouts)
		if stats := src.Pool.PoolStats(); stats != nil {
			// Timeouts before the sampler existed are not this counter's.
			s.lastTimeouts = stats.Timeouts
		}
	}
	if src.Queues != nil {
		s.depth = scope.Gauge(LockQueueDepth)
	}
	return s
}

// Run samples now and then every interval until ctx is done.
func (s *Sampler) Run(ctx context.Context) {
	ticker := time.NewTicker(s.interval)
	defer ticker.Stop()
	for {
		s.Sample()
		s.SampleQueues(ctx)
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// Sample updates the gauges that read no backend: health, fallback and the
// Redis pool. It does not block, so a health listener can call it the moment
// the health changes.
func (s *Sampler) Sample() {
	s.mu.Lock()
	defer s.mu.Unlock()
	status := redisclient.HealthHealthy
	if s.src.Health != nil {
		status = s.src.Health()
	}
	s.health.Update(HealthValue(status))
	fallback := 0.0
	if s.src.Fallback != nil && s.src.Fallback() {
		fallback = 1
	}
	s.fallback.Update(fallback)
	if s.src.Pool == nil {
		return
	}
	stats := s.src.Pool.PoolStats()
	if stats == nil {
		return
	}
	s.active.Update(float64(stats.TotalConns) - float64(stats.IdleConns))
	s.idle.Update(float64(stats.IdleConns))
	if stats.Timeouts > s.lastTimeouts {
		s.timeouts.Inc(int64(stats.Timeouts - s.lastTimeouts))
	}
	s.lastTimeouts = stats.Timeouts
}

// SampleQueues reads the queues and sets their depth: the durable entries,
// not the replicas in a bounded wait. A failed read keeps the last depth and
// is logged at debug level: the health gauge already says the backend is out
// of reach.
func (s *Sampler) SampleQueues(ctx context.Context) {
	if s.src.Queues == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, queueReadTimeout)
	defer cancel()
	queues, err := s.src.Queues.Queues(ctx)
	if err != nil {
		s.logger.Debug("enhanced locking metrics: reading the lock queues for their depth: %s", err)
		return
	}
	depth := 0
	for _, q := range queues {
		for _, e := range q.Entries {
			if !e.Synchronous {
				depth++
			}
		}
	}
	s.depth.Update(float64(depth))
}

// HealthValue is the gauge's value of a health status.
func HealthValue(s redisclient.HealthStatus) float64 {
	switch s {
	case redisclient.HealthHealthy:
		return 1
	case redisclient.HealthDegraded:
		return 0.5
	default:
		return 0
	}
}
