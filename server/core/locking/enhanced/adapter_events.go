package enhanced

import (
	"time"

	"github.com/runatlantis/atlantis/server/events/models"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/events"
)

// fallbackBackend is the Backend a switch to the fallback names.
const fallbackBackend = "legacy"

// publishAnswer tells of the answer to one project lock request that started
// at start: the lock acquired (current), refused because current holds it,
// or an error.
func (a *Adapter) publishAnswer(lock models.ProjectLock, start time.Time, acquired bool, current models.ProjectLock, err error) {
	now := time.Now()
	e := events.Event{Time: now, Duration: now.Sub(start), Lock: &lock}
	switch {
	case err != nil:
		e.Type, e.Err = events.EventLockFailed, err
	case acquired:
		e.Type, e.Lock = events.EventLockAcquired, &current
	default:
		e.Type, e.Current = events.EventLockContended, &current
	}
	a.opts.Events.Publish(e)
}

// publishReleased tells of a released lock; nil released nothing.
func (a *Adapter) publishReleased(lock *models.ProjectLock) {
	if lock != nil {
		a.opts.Events.Publish(events.Event{Type: events.EventLockReleased, Time: time.Now(), Lock: lock})
	}
}
