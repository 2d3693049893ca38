package metrics

import (
	tally "github.com/uber-go/tally/v4"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/events"
)

// Recorder counts and times the lock lifecycle from the event stream. Every
// series is created by NewRecorder, so each reads 0 until its first event
// rather than being missing, which alert rules and rates need.
//
// Hand-overs, expiries and re-plans are published by the replica that
// delivers them, once per fleet, so their sums over the replicas count each
// one once; requests and releases are counted by the replica that served
// them.
type Recorder struct {
	scope       tally.Scope
	acquireTime tally.Timer
	queueWait   tally.Timer
	counters    map[events.EventType]tally.Counter
}

// counted names the counter of each event type that is counted.
var counted = map[events.EventType]string{
	events.EventLockAcquired:      LocksAcquired,
	events.EventLockContended:     LocksContended,
	events.EventLockFailed:        LockErrors,
	events.EventLockQueued:        LockRequestsQueued,
	events.EventLockReleased:      LocksReleased,
	events.EventLockTransferred:   LockQueueTransfers,
	events.EventQueueEntryExpired: LockQueueExpiries,
	events.EventReplanStarted:     LockQueueReplans,
	events.EventReplanFailed:      LockQueueReplanFailed,
	events.EventLockConflict:      LockConflicts,
	events.EventMirrorFailed:      MirrorFailures,
	events.EventLockReaped:        LocksReaped,
}

// NewRecorder creates the series on scope. backendName is where lock
// operations go when no fallback is active ("redis", "boltdb"): both of
// FallbackEvents' series exist from the start.
func NewRecorder(scope tally.Scope, backendName string) *Recorder {
	r := &Recorder{
		scope:       scope,
		acquireTime: scope.Timer(LockAcquisitionDuration),
		queueWait:   scope.Timer(LockQueueWait),
		counters:    make(map[events.EventType]tally.Counter, len(counted)),
	}
	for typ, name := range counted {
		r.counters[typ] = scope.Counter(name)
	}
	scope.Counter(DeadlocksDetected)
	r.fallback("legacy")
	r.fallback(backendName)
	return r
}

func (r *Recorder) fallback(to string) tally.Counter {
	return r.scope.Tagged(map[string]string{"to": to}).Counter(FallbackEvents)
}

// Record is the subscriber: it counts e and records its duration where its
// type has a timer.
func (r *Recorder) Record(e events.Event) {
	if c, ok := r.counters[e.Type]; ok {
		c.Inc(1)
	}
	switch e.Type {
	case events.EventLockAcquired, events.EventLockContended, events.EventLockFailed:
		r.acquireTime.Record(e.Duration)
	case events.EventLockTransferred:
		// An entry whose enqueue time is unknown (0) has no wait to tell.
		if e.Duration > 0 {
			r.queueWait.Record(e.Duration)
		}
	case events.EventFallbackActivated, events.EventFallbackRecovered:
		r.fallback(e.Backend).Inc(1)
	}
}
