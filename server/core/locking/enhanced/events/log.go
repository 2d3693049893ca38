package events

import (
	"fmt"
	"strings"

	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"
)

// LogTo returns a subscriber that writes each event to logger as one line.
// What happens to every request (acquired, contended, queued, released) is
// logged at debug level; what an operator may have to act on (a conflict, a
// lost legacy copy, a failed request or re-plan) as a warning; the rest
// (hand-overs, expiries, backend switches) at info.
func LogTo(logger logging.SimpleLogging) func(Event) {
	return func(e Event) {
		line := "enhanced locking event " + e.String()
		switch e.Type {
		case EventLockAcquired, EventLockContended, EventLockQueued, EventLockReleased:
			logger.Debug("%s", line)
		case EventLockConflict, EventMirrorFailed, EventLockFailed, EventReplanFailed:
			logger.Warn("%s", line)
		default:
			logger.Info("%s", line)
		}
	}
}

// String describes the event in one line: its type, then the fields it
// carries.
func (e Event) String() string {
	parts := []string{string(e.Type) + ":"}
	if e.Lock != nil {
		parts = append(parts, "lock="+describeLock(*e.Lock))
	}
	if e.Current != nil {
		parts = append(parts, "current="+describeLock(*e.Current))
	}
	if e.Backend != "" {
		parts = append(parts, "backend="+e.Backend)
	}
	if e.Duration > 0 {
		parts = append(parts, "duration="+e.Duration.String())
	}
	if e.Err != nil {
		parts = append(parts, fmt.Sprintf("err=%q", e.Err.Error()))
	}
	return strings.Join(parts, " ")
}

// describeLock names a lock by its key and the pull holding or asking for it.
func describeLock(l models.ProjectLock) string {
	return fmt.Sprintf("%s(%s#%d)", models.GenerateLockKey(l.Project, l.Workspace), l.Pull.BaseRepo.FullName, l.Pull.Num)
}
