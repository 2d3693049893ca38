package events

// The lock lifecycle: what happens to a project lock request and to the lock
// from the request to its release. The adapter publishes the requests and
// releases; the queue worker publishes hand-overs, expiries and re-plans as
// it delivers them, once per fleet.
const (
	// EventLockAcquired: a project lock request got the lock (Lock); Duration
	// is how long it took to answer, any bounded wait included.
	EventLockAcquired EventType = "lock_acquired"
	// EventLockContended: a project lock request was refused because another
	// pull holds the lock (Current); Duration as for EventLockAcquired. A
	// request that joined the lock's queue published EventLockQueued first.
	EventLockContended EventType = "lock_contended"
	// EventLockFailed: a project lock request failed with Err, for example
	// because the backend is out of reach.
	EventLockFailed EventType = "lock_failed"
	// EventLockQueued: a refused request (Lock) is in the queue of the lock
	// another pull holds (Current), put there now or already.
	EventLockQueued EventType = "lock_queued"
	// EventLockReleased: a lock was released (Lock, as it was held). When
	// its queue had entries the backend handed it on in the same step; the
	// replica that delivers the hand-over publishes EventLockTransferred.
	EventLockReleased EventType = "lock_released"
	// EventLockTransferred: a released lock was handed to the head of its
	// queue (Lock, as the new holder has it); Duration is how long the entry
	// waited. Published once per hand-over in a fleet: by the replica that
	// delivers its notice.
	EventLockTransferred EventType = "lock_transferred"
	// EventQueueEntryExpired: a queued request (Lock) waited its timeout out
	// and left the queue; Current is the holder it waited for, if any.
	// Published once per expiry in a fleet, as EventLockTransferred.
	EventQueueEntryExpired EventType = "queue_entry_expired"
	// EventReplanStarted: the plan of the pull handed a lock (Lock) was
	// started again for it.
	EventReplanStarted EventType = "replan_started"
	// EventReplanFailed: such a plan failed or did not run (Err).
	EventReplanFailed EventType = "replan_failed"
	// EventLockReaped: the lock (Lock) of a closed or merged pull was
	// released by the stale-lock reaper.
	EventLockReaped EventType = "lock_reaped"
)
