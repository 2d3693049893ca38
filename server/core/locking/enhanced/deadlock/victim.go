package deadlock

import (
	"cmp"
	"slices"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// standing is what the victim choice weighs of one pull in a deadlock.
type standing struct {
	pull enhanced.PullRef
	// priority is the highest of its entries in the deadlock: a pull with
	// one critical project counts as critical.
	priority enhanced.Priority
	// queued is when its latest entry in the deadlock joined its queue.
	queued time.Time
	// locked is when it took the latest of its locks in the deadlock.
	locked time.Time
}

// Victim is the pull release-victim frees: the lowest priority, then the
// youngest, the one whose latest entry in the deadlock queued last (it has
// waited least, so loses least), then the one that took its latest lock in it
// last, then the highest pull number. Every replica reading the same deadlock
// picks the same pull. Every pull of a deadlock waits in it, so each has an
// entry to weigh.
func (d Deadlock) Victim() enhanced.PullRef {
	return d.victim().pull
}

func (d Deadlock) victim() *standing {
	standings := map[enhanced.PullRef]*standing{}
	for _, p := range d.Pulls {
		standings[p] = &standing{pull: p, priority: enhanced.PriorityCritical + 1}
	}
	for _, w := range d.Waits {
		s := standings[w.Waiter]
		s.priority = higher(s.priority, w.Entry.Priority)
		if w.Entry.Enqueued.After(s.queued) {
			s.queued = w.Entry.Enqueued
		}
		if h := standings[w.Holder]; w.Lock.Time.After(h.locked) {
			h.locked = w.Lock.Time
		}
	}
	victim := standings[d.Pulls[0]]
	for _, p := range d.Pulls[1:] {
		if s := standings[p]; victimFirst(s, victim) {
			victim = s
		}
	}
	return victim
}

// higher is the higher of two priorities, where a priority above critical
// stands for none seen yet.
func higher(seen, p enhanced.Priority) enhanced.Priority {
	if seen > enhanced.PriorityCritical {
		return p
	}
	return max(seen, p)
}

// victimFirst says whether a is freed before b.
func victimFirst(a, b *standing) bool {
	return cmp.Or(
		cmp.Compare(a.priority, b.priority),
		a.queued.Compare(b.queued)*-1,
		a.locked.Compare(b.locked)*-1,
		comparePulls(a.pull, b.pull)*-1,
	) < 0
}

// HeldBy returns the locks pull holds that another pull of the deadlock waits
// for, in lock key order: what release-victim frees.
func (d Deadlock) HeldBy(pull enhanced.PullRef) []models.ProjectLock {
	var locks []models.ProjectLock
	seen := map[string]bool{}
	for _, w := range d.Waits {
		if w.Holder == pull && !seen[w.Key()] {
			seen[w.Key()] = true
			locks = append(locks, w.Lock)
		}
	}
	slices.SortFunc(locks, func(a, b models.ProjectLock) int {
		return cmp.Compare(models.GenerateLockKey(a.Project, a.Workspace), models.GenerateLockKey(b.Project, b.Workspace))
	})
	return locks
}
