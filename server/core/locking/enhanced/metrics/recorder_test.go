package metrics_test

import (
	"errors"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"
	tally "github.com/uber-go/tally/v4"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/events"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/metrics"
)

func counters(scope tally.TestScope) map[string]int64 {
	out := map[string]int64{}
	for k, c := range scope.Snapshot().Counters() {
		out[k] = c.Value()
	}
	return out
}

func timed(scope tally.TestScope, name string) []time.Duration {
	t, ok := scope.Snapshot().Timers()[name+"+"]
	if !ok {
		return nil
	}
	return t.Values()
}

// Every series exists, at zero, before the first event.
func TestRecorder_CreatesEverySeriesAtZero(t *testing.T) {
	scope := tally.NewTestScope("", nil)
	metrics.NewRecorder(scope, "redis")
	Equals(t, map[string]int64{
		"locks_acquired_total+":             0,
		"locks_contended_total+":            0,
		"lock_errors_total+":                0,
		"lock_requests_queued_total+":       0,
		"locks_released_total+":             0,
		"lock_queue_transfers_total+":       0,
		"lock_queue_expiries_total+":        0,
		"lock_queue_replans_started_total+": 0,
		"lock_queue_replans_failed_total+":  0,
		"lock_conflicts_total+":             0,
		"mirror_failures_total+":            0,
		"locks_reaped_total+":               0,
		"deadlocks_detected_total+":         0,
		"fallback_events_total+to=legacy":   0,
		"fallback_events_total+to=redis":    0,
	}, counters(scope))
}

// Each event lands in its series, with its duration where it has a timer.
func TestRecorder_CountsEachEventType(t *testing.T) {
	scope := tally.NewTestScope("", nil)
	r := metrics.NewRecorder(scope, "redis")
	lock := &models.ProjectLock{Project: models.NewProject("org/repo", "dir", ""), Workspace: "default"}
	for _, e := range []events.Event{
		{Type: events.EventLockAcquired, Lock: lock, Duration: time.Millisecond},
		{Type: events.EventLockAcquired, Lock: lock, Duration: 2 * time.Millisecond},
		{Type: events.EventLockContended, Lock: lock, Current: lock, Duration: 3 * time.Millisecond},
		{Type: events.EventLockQueued, Lock: lock, Current: lock},
		{Type: events.EventLockFailed, Lock: lock, Err: errors.New("down"), Duration: 4 * time.Millisecond},
		{Type: events.EventLockReleased, Lock: lock},
		{Type: events.EventLockTransferred, Lock: lock, Duration: time.Hour},
		{Type: events.EventLockTransferred, Lock: lock}, // enqueue time unknown: no wait
		{Type: events.EventQueueEntryExpired, Lock: lock},
		{Type: events.EventReplanStarted, Lock: lock},
		{Type: events.EventReplanFailed, Lock: lock, Err: errors.New("plan failed")},
		{Type: events.EventLockConflict, Lock: lock, Current: lock},
		{Type: events.EventMirrorFailed, Lock: lock, Err: errors.New("bolt")},
		{Type: events.EventLockReaped, Lock: lock},
		{Type: events.EventFallbackActivated, Backend: "legacy"},
		{Type: events.EventFallbackRecovered, Backend: "redis"},
		{Type: events.EventFallbackActivated, Backend: "legacy"},
		{Type: "deadlock_detected"}, // the detector counts deadlocks itself
	} {
		r.Record(e)
	}
	Equals(t, map[string]int64{
		"locks_acquired_total+":             2,
		"locks_contended_total+":            1,
		"lock_errors_total+":                1,
		"lock_requests_queued_total+":       1,
		"locks_released_total+":             1,
		"lock_queue_transfers_total+":       2,
		"lock_queue_expiries_total+":        1,
		"lock_queue_replans_started_total+": 1,
		"lock_queue_replans_failed_total+":  1,
		"lock_conflicts_total+":             1,
		"mirror_failures_total+":            1,
		"locks_reaped_total+":               1,
		"deadlocks_detected_total+":         0,
		"fallback_events_total+to=legacy":   2,
		"fallback_events_total+to=redis":    1,
	}, counters(scope))
	Equals(t, []time.Duration{time.Millisecond, 2 * time.Millisecond, 3 * time.Millisecond, 4 * time.Millisecond},
		timed(scope, metrics.LockAcquisitionDuration))
	Equals(t, []time.Duration{time.Hour}, timed(scope, metrics.LockQueueWait))
}

// The deadlock detector's increments on the same scope land in the series
// the Recorder created.
func TestRecorder_SharesTheDeadlockCounter(t *testing.T) {
	scope := tally.NewTestScope("", nil)
	metrics.NewRecorder(scope.SubScope("enhanced"), "boltdb")
	scope.SubScope("enhanced").Counter(metrics.DeadlocksDetected).Inc(2)
	Equals(t, int64(2), counters(scope)["enhanced.deadlocks_detected_total+"])
	Equals(t, int64(0), counters(scope)["enhanced.fallback_events_total+to=boltdb"])
}
