package enhanced

import "fmt"

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
