// Package deadlock finds pulls that wait for each other's locks forever and
// resolves them: with durable queues, pull A can hold lock X and wait in the
// queue of lock Y while pull B holds Y and waits in the queue of X. Neither
// is ever handed what it waits for, since each lock is only handed on when
// its holder lets it go.
//
// The detector reads every queue from the backend (so it sees the entries of
// every replica), builds the wait-for graph of pulls, finds its cycles, makes
// sure each still stands, and, on one replica per cycle, tells the pulls in it
// or frees one of them (the victim).
package deadlock

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/runatlantis/atlantis/server/events/models"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// Wait is one edge of the wait-for graph: Waiter has a durable entry in the
// queue of Lock, which Holder holds.
type Wait struct {
	Waiter enhanced.PullRef
	Holder enhanced.PullRef
	// Lock is the lock as its holder holds it.
	Lock models.ProjectLock
	// HolderID identifies the acquisition that holds Lock, where the backend
	// tells acquisitions apart (LockQueue.HolderID).
	HolderID string
	// Entry is the waiter's entry in Lock's queue.
	Entry enhanced.QueueEntry
	// key is Key, computed once: sorting and hashing ask for it often.
	key string
}

// Key is the lock's key, as upstream names locks.
func (w Wait) Key() string {
	if w.key != "" {
		return w.key
	}
	return models.GenerateLockKey(w.Lock.Project, w.Lock.Workspace)
}

// identity tells this wait apart from a later wait of the same pulls on the
// same lock: the same entry ID and the same acquisition mean the wait lasted
// from one read to the next, since an entry leaves its queue only once and
// an acquisition that ended never holds again. Backends without acquisition
// IDs (BoltDB, which reads its queues in one transaction) fall back on the
// lock's time.
func (w Wait) identity() string {
	holder := w.HolderID
	if holder == "" {
		holder = w.Lock.Time.UTC().Format("2006-01-02T15:04:05.000000000")
	}
	return fmt.Sprintf("%s\x00%s\x00%s\x00%s\x00%s", w.Key(), pullKey(w.Waiter), pullKey(w.Holder), w.Entry.ID, holder)
}

// Graph is the wait-for graph of pulls: an edge from A to B for every lock
// B holds in whose queue A has a durable entry.
//
// Not edges, by construction:
//   - a pull's wait for itself (an entry of the pull that holds the lock, or
//     across its own projects): it never blocks the pull, since a lock
//     already the pull's is never queued for and is handed to it otherwise;
//   - an entry in the queue of a free lock: the lock was released a moment
//     ago and is being handed to the queue's head (or a sweep hands it);
//   - a synchronous waiter (QueueEntry.Synchronous): a replica blocked for
//     a bounded wait, which ends by itself within --enhanced-locking-wait-timeout
//     and then answers "locked" as upstream does. Counting it would report
//     cycles that break by themselves a few seconds later.
type Graph struct {
	waits []Wait
	// out lists, for each pull, the indexes of its waits.
	out   map[enhanced.PullRef][]int
	pulls []enhanced.PullRef
}

// NewGraph builds the graph from the queues, as QueueBackend.Queues returns
// them.
func NewGraph(queues []enhanced.LockQueue) *Graph {
	n := 0
	for _, q := range queues {
		n += len(q.Entries)
	}
	waits := make([]Wait, 0, n)
	for _, q := range queues {
		if q.Holder == nil {
			continue
		}
		holder := PullOf(*q.Holder)
		for _, e := range q.Entries {
			if e.Synchronous {
				continue
			}
			waiter := PullOf(e.Lock)
			if waiter == holder {
				continue
			}
			waits = append(waits, Wait{Waiter: waiter, Holder: holder, Lock: *q.Holder, HolderID: q.HolderID, Entry: e,
				key: models.GenerateLockKey(q.Holder.Project, q.Holder.Workspace)})
		}
	}
	return newGraph(waits)
}

func newGraph(unsorted []Wait) *Graph {
	// Sorted through indexes: a Wait carries two locks, too big to move
	// around at every swap.
	order := make([]int, len(unsorted))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return compareWaits(&unsorted[a], &unsorted[b]) })
	waits := make([]Wait, len(unsorted))
	for i, j := range order {
		waits[i] = unsorted[j]
	}
	g := &Graph{waits: waits, out: map[enhanced.PullRef][]int{}}
	seen := map[enhanced.PullRef]bool{}
	for i, w := range waits {
		g.out[w.Waiter] = append(g.out[w.Waiter], i)
		for _, p := range []enhanced.PullRef{w.Waiter, w.Holder} {
			if !seen[p] {
				seen[p] = true
				g.pulls = append(g.pulls, p)
			}
		}
	}
	slices.SortFunc(g.pulls, comparePulls)
	return g
}

// Waits returns every edge, ordered by waiter, holder, then lock key.
func (g *Graph) Waits() []Wait { return g.waits }

// PullOf is the pull that holds or asks for lock: its repo and number. A
// lock of a repo's project is always asked for by a pull of that repo.
func PullOf(lock models.ProjectLock) enhanced.PullRef {
	repo := lock.Pull.BaseRepo.FullName
	if repo == "" {
		repo = lock.Project.RepoFullName
	}
	return enhanced.PullRef{RepoFullName: repo, Num: lock.Pull.Num}
}

func pullKey(p enhanced.PullRef) string { return fmt.Sprintf("%s#%d", p.RepoFullName, p.Num) }

func comparePulls(a, b enhanced.PullRef) int {
	return cmp.Or(cmp.Compare(a.RepoFullName, b.RepoFullName), cmp.Compare(a.Num, b.Num))
}

func compareWaits(a, b *Wait) int {
	return cmp.Or(comparePulls(a.Waiter, b.Waiter), comparePulls(a.Holder, b.Holder), cmp.Compare(a.Key(), b.Key()))
}
