package enhanced

import (
	"fmt"
	"strings"
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

// ParsePriority reads one of low, normal, high or critical.
func ParsePriority(s string) (Priority, error) {
	for p, name := range priorityNames {
		if strings.EqualFold(strings.TrimSpace(s), name) {
			return p, nil
		}
	}
	return PriorityNormal, fmt.Errorf("unknown priority %q: use one of low, normal, high, critical", s)
}
