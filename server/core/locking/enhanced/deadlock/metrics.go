package deadlock

import tally "github.com/uber-go/tally/v4"

// metrics are the detector's series. With upstream's default namespace and
// the server's "enhanced" sub-scope they read
// atlantis_enhanced_deadlocks_detected_total and
// atlantis_enhanced_deadlocks_resolved_total{mode="notify"|"release-victim"}.
// Only the replica that claims a deadlock counts it, so the sums over a fleet
// count each deadlock once (and once more per NotifyAgainAfter it lasts,
// under notify).
type metrics struct {
	detected tally.Counter
	resolved tally.Counter
}

func newMetrics(scope tally.Scope, mode Resolution) metrics {
	return metrics{
		detected: scope.Counter("deadlocks_detected_total"),
		resolved: scope.Tagged(map[string]string{"mode": string(mode)}).Counter("deadlocks_resolved_total"),
	}
}
