// Package eventstest helps tests see what was published.
package eventstest

import (
	"sync"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/events"
)

// Collector is a Publisher that keeps every event, in the order Publish was
// called. It is safe for concurrent use.
type Collector struct {
	mu  sync.Mutex
	got []events.Event
}

var _ events.Publisher = (*Collector)(nil)

func (c *Collector) Publish(e events.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got = append(c.got, e)
}

// Events returns what was published so far.
func (c *Collector) Events() []events.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]events.Event(nil), c.got...)
}

// Take returns what was published since the last Take.
func (c *Collector) Take() []events.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	got := c.got
	c.got = nil
	return got
}

// OfType returns the events of type typ published so far.
func (c *Collector) OfType(typ events.EventType) []events.Event {
	var out []events.Event
	for _, e := range c.Events() {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}
