package backends

import (
	"sort"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
)

// localWaiter is one TryLockWithTimeout call of the BoltDB backend.
type localWaiter struct {
	lock models.ProjectLock
	// score orders the queue: arrival minus headstart (see
	// enhanced.Priority.Headstart), then seq.
	score time.Time
	seq   uint64
	// granted receives the lock when it is handed over; buffered so the
	// handoff never blocks on a waiter that stopped listening.
	granted chan models.ProjectLock
	// handed is set, under the backend's mutex, when the lock is handed over.
	handed bool
}

// localQueue holds the waiters for one lock, in the order of
// enhanced.Priority.Headstart.
type localQueue []*localWaiter

func (q *localQueue) push(w *localWaiter) {
	*q = append(*q, w)
	sort.SliceStable(*q, func(i, j int) bool {
		a, b := (*q)[i], (*q)[j]
		if !a.score.Equal(b.score) {
			return a.score.Before(b.score)
		}
		return a.seq < b.seq
	})
}

func (q *localQueue) pop() *localWaiter {
	if len(*q) == 0 {
		return nil
	}
	w := (*q)[0]
	*q = (*q)[1:]
	return w
}

// pushFront puts back a waiter that pop returned but could not be served.
func (q *localQueue) pushFront(w *localWaiter) {
	*q = append(localQueue{w}, *q...)
}

func (q *localQueue) remove(w *localWaiter) {
	for i, x := range *q {
		if x == w {
			*q = append((*q)[:i], (*q)[i+1:]...)
			return
		}
	}
}
