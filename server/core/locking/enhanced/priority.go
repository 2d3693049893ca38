package enhanced

import (
	"fmt"
	"strings"
	"time"
)

// Priority orders requests waiting for the same lock. The zero value is
// PriorityNormal so that a request nobody classified waits as an ordinary one.
type Priority int

const (
	PriorityLow      Priority = -1
	PriorityNormal   Priority = 0
	PriorityHigh     Priority = 1
	PriorityCritical Priority = 2
)

var priorityNames = map[Priority]string{
	PriorityLow:      "low",
	PriorityNormal:   "normal",
	PriorityHigh:     "high",
	PriorityCritical: "critical",
}

func (p Priority) String() string {
	if name, ok := priorityNames[p]; ok {
		return name
	}
	return fmt.Sprintf("priority(%d)", int(p))
}

// ParsePriority reads a priority by its name: critical, high, normal or low.
func ParsePriority(name string) (Priority, error) {
	for p, n := range priorityNames {
		if strings.EqualFold(n, name) {
			return p, nil
		}
	}
	return PriorityNormal, fmt.Errorf("unknown priority %q: use critical, high, normal or low", name)
}

// How a queue orders its requests: by arrival time minus a headstart. Each
// level above normal moves a request one aging step earlier and low moves it
// one step later, so a request that has waited an aging step longer than
// another counts as one level higher: a low request is served before every
// normal one that arrived more than an aging step after it, and nothing
// waits forever behind later arrivals. Critical sorts ahead of every other
// level whatever their waiting time, and critical requests among themselves
// by arrival. Nothing pre-empts a lock that is held.
const (
	criticalHeadstart = 100 * 365 * 24 * time.Hour
	// MaxAgingStep keeps every headstart far below the critical one, so
	// critical stays ahead.
	MaxAgingStep = 10 * 365 * 24 * time.Hour
)

// Headstart is how far ahead of its arrival a request of priority p sorts
// when waiting one aging step counts as one level.
func (p Priority) Headstart(agingStep time.Duration) time.Duration {
	if p >= PriorityCritical {
		return criticalHeadstart
	}
	return time.Duration(p) * min(agingStep, MaxAgingStep)
}
