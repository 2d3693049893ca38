package commandlease

import (
	tally "github.com/uber-go/tally/v4"
)

// metrics are the lease's, under the enhanced scope:
// atlantis_enhanced_command_lease_*.
type metrics struct {
	// waits counts commands that found their pull's lease held.
	waits tally.Counter
	// waitTime is how long those commands waited before they ran.
	waitTime tally.Timer
	// lost counts leases lost while their command ran.
	lost tally.Counter
	// refused counts commands that waited the whole timeout and did not run.
	refused tally.Counter
}

func newMetrics(scope tally.Scope) metrics {
	s := scope.SubScope("command_lease")
	return metrics{
		waits:    s.Counter("waits_total"),
		waitTime: s.Timer("wait_seconds"),
		lost:     s.Counter("lost_total"),
		refused:  s.Counter("refused_total"),
	}
}
