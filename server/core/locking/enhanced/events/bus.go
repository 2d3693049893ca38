// Package events is the in-process stream of lock lifecycle events: the
// adapter and the queue worker publish on a Bus, and the metrics, the log and
// anything else that wants to hear subscribe to it.
//
// A subscriber never slows locking down: each has a bounded buffer and a
// goroutine of its own, and an event that finds the buffer full is dropped
// for that subscriber alone and counted. So a subscriber may miss events;
// what must reach a pull request whatever happens (a hand-over's comment, its
// re-plan) goes through the queue's durable outbox, not through the bus.
package events

import (
	"slices"
	"sync"
	"sync/atomic"

	tally "github.com/uber-go/tally/v4"
)

// MetricDrops counts the events a subscriber missed because its buffer was
// full, tagged with the subscriber's name: with upstream's namespace and the
// server's "enhanced" sub-scope, atlantis_enhanced_event_drops_total.
const MetricDrops = "event_drops_total"

// Bus hands every published event to each subscriber, in the order it was
// published. It is safe for concurrent use.
type Bus struct {
	scope tally.Scope

	// mu is held for reading while an event is put in the buffers and for
	// writing while a subscriber comes or goes, so no event is ever put in a
	// buffer that was closed.
	mu     sync.RWMutex
	subs   []*Subscription
	closed bool
}

var _ Publisher = (*Bus)(nil)

// NewBus returns a bus counting drops on scope; nil counts nothing.
func NewBus(scope tally.Scope) *Bus {
	if scope == nil {
		scope = tally.NoopScope
	}
	return &Bus{scope: scope}
}

// Subscription is one subscriber's place on a bus.
type Subscription struct {
	bus     *Bus
	name    string
	buffer  chan Event
	handle  func(Event)
	drops   tally.Counter
	dropped atomic.Uint64
	done    chan struct{}
}

// Subscribe calls handle with every event published from now on, one at a
// time and in publish order, on a goroutine of its own. Up to buffer events
// wait for handle while it runs; an event published while they are all
// waiting is dropped for this subscriber and counted in MetricDrops, tagged
// subscriber=name. A buffer below one is one. On a closed bus the
// subscription is closed already and handle is never called.
func (b *Bus) Subscribe(name string, buffer int, handle func(Event)) *Subscription {
	s := &Subscription{
		bus:    b,
		name:   name,
		buffer: make(chan Event, max(buffer, 1)),
		handle: handle,
		drops:  b.scope.Tagged(map[string]string{"subscriber": name}).Counter(MetricDrops),
		done:   make(chan struct{}),
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		close(s.done)
		return s
	}
	b.subs = append(b.subs, s)
	b.mu.Unlock()
	go s.run()
	return s
}

// Publish gives e to every subscriber whose buffer has room and counts a drop
// for each other one. It never waits for a subscriber. Publishing on a
// closed bus does nothing.
func (b *Bus) Publish(e Event) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	for _, s := range b.subs {
		select {
		case s.buffer <- e:
		default:
			s.dropped.Add(1)
			s.drops.Inc(1)
		}
	}
}

// Close closes every subscription, each once its handler has had the events
// already in its buffer, and stops the bus: later events go nowhere.
func (b *Bus) Close() {
	b.mu.Lock()
	subs := b.subs
	b.subs, b.closed = nil, true
	for _, s := range subs {
		close(s.buffer)
	}
	b.mu.Unlock()
	for _, s := range subs {
		<-s.done
	}
}

func (s *Subscription) run() {
	defer close(s.done)
	for e := range s.buffer {
		s.handle(e)
	}
}

// Name is the subscriber's name, as its drops are tagged.
func (s *Subscription) Name() string { return s.name }

// Dropped is how many events this subscriber missed because its buffer was
// full.
func (s *Subscription) Dropped() uint64 { return s.dropped.Load() }

// Close unsubscribes: no event published after it reaches the handler, and
// it returns once the handler has had the events already in the buffer and
// returned, so the handler is never called again. It must not be called from
// the handler itself.
func (s *Subscription) Close() {
	b := s.bus
	b.mu.Lock()
	if i := slices.Index(b.subs, s); i >= 0 {
		b.subs = slices.Delete(b.subs, i, i+1)
		close(s.buffer)
	}
	b.mu.Unlock()
	<-s.done
}
