package events

import (
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
)

// EventType names something that happened to the locking system that an
// operator or a pull request may need to hear about.
type EventType string

const (
	// EventFallbackActivated: the backend became unreachable and locks now go
	// to the legacy database.
	EventFallbackActivated EventType = "fallback_activated"
	// EventFallbackRecovered: the backend is back and has the locks taken
	// meanwhile.
	EventFallbackRecovered EventType = "fallback_recovered"
	// EventLockConflict: a lock from the legacy database could not be copied
	// into the backend because another pull holds it there. Nothing was
	// overwritten; the pull named in Lock has to be looked at.
	EventLockConflict EventType = "lock_conflict"
	// EventMirrorFailed: the legacy copy of a lock change could not be written,
	// so a rollback would not see it.
	EventMirrorFailed EventType = "mirror_failed"
	// EventDeadlockDetected: pulls wait in lock queues for each other's locks
	// (package deadlock); Lock is one of those locks. Published by the one
	// replica that acts on the deadlock.
	EventDeadlockDetected EventType = "deadlock_detected"
	// EventDeadlockResolved: the pulls of a deadlock were told of it
	// (notify), or its victim was freed (release-victim); Lock is a lock the
	// victim freed, or one of the deadlock's.
	EventDeadlockResolved EventType = "deadlock_resolved"
)

// Event is one occurrence of an EventType.
type Event struct {
	Type EventType
	Time time.Time
	// Duration is how long what the event ends took, where its type says so.
	Duration time.Duration
	// Backend names where lock operations go from now on, for the backend
	// switches (EventFallbackActivated, EventFallbackRecovered): "legacy"
	// for the fallback, else the backend's name, such as "redis".
	Backend string
	// Lock is the lock the event is about, if any.
	Lock *models.ProjectLock
	// Current is the lock that stands in its way, for conflicts and refusals.
	Current *models.ProjectLock
	Err     error
}

// Publisher receives events. Publish must not block for long: it is called on
// the lock path.
type Publisher interface {
	Publish(Event)
}

// PublisherFunc lets a function be a Publisher.
type PublisherFunc func(Event)

func (f PublisherFunc) Publish(e Event) { f(e) }
