package enhanced

import (
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
)

// QueuePolicy decides, for the adapter, which requests for a lock another
// pull holds join the lock's durable queue, and at what priority. The queue
// package implements it from the priority rules and the commands running in
// this process.
type QueuePolicy interface {
	// Classify gives a request its priority and the headstart that places
	// it in a queue (Priority.Headstart); it applies to synchronous waits
	// too.
	Classify(lock models.ProjectLock) (Priority, time.Duration)
	// ShouldQueue says whether a request refused because another pull holds
	// the lock joins the lock's queue.
	ShouldQueue(lock models.ProjectLock) bool
	// Timeout is how long an entry waits before it expires.
	Timeout() time.Duration
	// Queued hears of every request the adapter put in a queue, or found
	// there already. It must not block: it is called on the lock path.
	Queued(res EnqueueResult)
	// Left hears of the entries a pull took out of their queues by leaving
	// them (closed, merged, unlocked): the pulls behind them moved up. It
	// must not block: it is called on the unlock path.
	Left(entries []QueueEntry)
}
