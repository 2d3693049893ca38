package queue

import tally "github.com/uber-go/tally/v4"

// metrics are the queue's series. With upstream's default namespace and the
// server's "enhanced" sub-scope they read atlantis_enhanced_<name>. Each
// replica counts the notices it delivered, so the sums over a fleet count
// every transfer and expiry once.
type metrics struct {
	depth          tally.Gauge
	waitTime       tally.Timer
	transfers      tally.Counter
	expiries       tally.Counter
	replansStarted tally.Counter
	replansFailed  tally.Counter
}

func newMetrics(scope tally.Scope) metrics {
	return metrics{
		depth:          scope.Gauge("lock_queue_depth"),
		waitTime:       scope.Timer("lock_queue_wait_seconds"),
		transfers:      scope.Counter("lock_queue_transfers_total"),
		expiries:       scope.Counter("lock_queue_expiries_total"),
		replansStarted: scope.Counter("lock_queue_replans_started_total"),
		replansFailed:  scope.Counter("lock_queue_replans_failed_total"),
	}
}
