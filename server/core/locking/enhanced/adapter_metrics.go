package enhanced

import (
	"time"

	tally "github.com/uber-go/tally/v4"
)

// adapterMetrics are the adapter's series. With upstream's default namespace
// and the "enhanced" sub-scope they read atlantis_enhanced_<name>.
type adapterMetrics struct {
	scope          tally.Scope
	acquireTime    tally.Timer
	acquired       tally.Counter
	contended      tally.Counter
	errors         tally.Counter
	conflicts      tally.Counter
	mirrorFailures tally.Counter
	queued         tally.Counter
}

func newAdapterMetrics(scope tally.Scope) adapterMetrics {
	return adapterMetrics{
		scope:          scope,
		acquireTime:    scope.Timer("lock_acquisition_duration_seconds"),
		acquired:       scope.Counter("locks_acquired_total"),
		contended:      scope.Counter("locks_contended_total"),
		errors:         scope.Counter("lock_errors_total"),
		conflicts:      scope.Counter("lock_conflicts_total"),
		mirrorFailures: scope.Counter("mirror_failures_total"),
		queued:         scope.Counter("lock_requests_queued_total"),
	}
}

func (m adapterMetrics) recordTryLock(start time.Time, acquired bool, err error) {
	m.acquireTime.Record(time.Since(start))
	switch {
	case err != nil:
		m.errors.Inc(1)
	case acquired:
		m.acquired.Inc(1)
	default:
		m.contended.Inc(1)
	}
}

// fallback counts a switch of the active backend, tagged with where locks go
// from now on.
func (m adapterMetrics) fallback(to string) {
	m.scope.Tagged(map[string]string{"to": to}).Counter("fallback_events_total").Inc(1)
}
