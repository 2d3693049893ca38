// Package metrics turns what enhanced locking does into series on upstream's
// tally scope: a Recorder subscribed to the event stream counts and times
// the lock lifecycle, and a Sampler reads the gauges from the backend. Given
// the server's "enhanced" sub-scope of upstream's stats scope, each name
// below reaches upstream's Prometheus endpoint as atlantis_enhanced_<name>
// and statsd as atlantis.enhanced.<name>.
package metrics

// Counted and timed from the event stream by the Recorder. Timers are
// summaries in seconds on Prometheus (upstream's reporter makes every tally
// timer one) and timers in milliseconds on statsd.
const (
	// LockAcquisitionDuration times each project lock request's answer
	// (acquired, refused or failed), any bounded wait included.
	LockAcquisitionDuration = "lock_acquisition_duration_seconds"
	LocksAcquired           = "locks_acquired_total"
	LocksContended          = "locks_contended_total"
	LockErrors              = "lock_errors_total"
	LockRequestsQueued      = "lock_requests_queued_total"
	LocksReleased           = "locks_released_total"
	LockQueueTransfers      = "lock_queue_transfers_total"
	// LockQueueWait times how long each entry waited before it was handed
	// the lock.
	LockQueueWait         = "lock_queue_wait_seconds"
	LockQueueExpiries     = "lock_queue_expiries_total"
	LockQueueReplans      = "lock_queue_replans_started_total"
	LockQueueReplanFailed = "lock_queue_replans_failed_total"
	LockConflicts         = "lock_conflicts_total"
	MirrorFailures        = "mirror_failures_total"
	LocksReaped           = "locks_reaped_total"
	// FallbackEvents counts backend switches, tagged to=legacy when a
	// fallback starts and to=<backend> when it ends.
	FallbackEvents = "fallback_events_total"
	// DeadlocksDetected is registered by the Recorder, so it reads 0 before
	// the first cycle, and incremented by the deadlock detector, untagged,
	// on the same scope.
	DeadlocksDetected = "deadlocks_detected_total"
)

// Sampled from the backend by the Sampler.
const (
	// BackendHealthStatus is 1 healthy, 0.5 degraded, 0 unhealthy.
	BackendHealthStatus = "backend_health_status"
	// FallbackActive is 1 while lock operations go to the legacy database.
	FallbackActive = "fallback_active"
	// LockQueueDepth counts the durable entries in every queue, as the
	// backend has them: the same on every replica.
	LockQueueDepth = "lock_queue_depth"
	// Redis's connection pool, of this replica's client.
	RedisConnectionsActive = "redis_connections_active"
	RedisConnectionsIdle   = "redis_connections_idle"
	RedisPoolTimeouts      = "redis_pool_timeouts_total"
)

// Counted below this package, on the scope the server gives it, which spells
// these names out: legacydb.UndecodableLocks, for both backends.
const (
	// LocksUndecodable counts the distinct stored lock values List could not
	// decode and left out, each logged with its key.
	LocksUndecodable = "lock_undecodable_total"
)
