package server

import (
	"github.com/runatlantis/atlantis/server/logging"
	tally "github.com/uber-go/tally/v4"

	lockevents "github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/events"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/metrics"
)

// The subscribers' buffers, in events. The metrics' handler only counts, so
// it keeps up with any lock traffic and its buffer absorbs bursts; the log's
// writes a line per event. A subscriber that falls behind anyway misses
// events, counted in atlantis_enhanced_event_drops_total{subscriber=...}.
const (
	metricsEventBuffer = 4096
	logEventBuffer     = 1024
)

// newEventBus is the lock event stream with its standing subscribers: the
// metrics on scope and the log.
func newEventBus(scope tally.Scope, backendName string, logger logging.SimpleLogging) *lockevents.Bus {
	bus := lockevents.NewBus(scope)
	bus.Subscribe("metrics", metricsEventBuffer, metrics.NewRecorder(scope, backendName).Record)
	bus.Subscribe("log", logEventBuffer, lockevents.LogTo(logger))
	return bus
}

// newSampler reads the gauges from the backend, the adapter and the queue
// every health-check interval.
func (s *Server) newSampler(scope tally.Scope, backend *lockBackend) *metrics.Sampler {
	src := metrics.Sources{Health: backend.healthStatus, Fallback: s.Adapter.FallbackActive}
	if backend.client != nil {
		src.Pool = backend.client
	}
	if s.queue != nil {
		src.Queues = s.queue.backend
	}
	return metrics.NewSampler(scope, src, s.Config.Performance.HealthCheckInterval, s.Logger)
}
