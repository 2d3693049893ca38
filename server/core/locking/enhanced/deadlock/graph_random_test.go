package deadlock_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/deadlock"
)

// randomQueues is a random state of up to 7 pulls and 9 locks: free and held
// locks, durable entries and synchronous waiters, entries of the holder
// itself.
func randomQueues(r *rand.Rand) []enhanced.LockQueue {
	pulls := 2 + r.IntN(6)
	locks := 1 + r.IntN(9)
	density := r.Float64()
	var queues []enhanced.LockQueue
	for l := range locks {
		holder := 1 + r.IntN(pulls)
		if r.IntN(10) == 0 {
			holder = 0
		}
		var waiting []int
		for p := 1; p <= pulls; p++ {
			if r.Float64() < density/2 {
				waiting = append(waiting, p)
			}
		}
		lq := q(fmt.Sprintf("dir%d", l), holder, waiting...)
		if r.IntN(4) == 0 {
			lq = withWaiter(lq, 1+r.IntN(pulls))
		}
		queues = append(queues, lq)
	}
	return queues
}

// referenceEdges is the wait-for relation read straight off the queues: a
// waits for b when a has a durable entry in a queue of a lock b holds.
func referenceEdges(queues []enhanced.LockQueue) map[[2]int]bool {
	edges := map[[2]int]bool{}
	for _, lq := range queues {
		if lq.Holder == nil {
			continue
		}
		for _, e := range lq.Entries {
			if !e.Synchronous && e.Lock.Pull.Num != lq.Holder.Pull.Num {
				edges[[2]int{e.Lock.Pull.Num, lq.Holder.Pull.Num}] = true
			}
		}
	}
	return edges
}

// referenceCycles enumerates every elementary cycle by brute force: each
// starts at its smallest pull and extends by every unvisited larger one.
func referenceCycles(edges map[[2]int]bool, pulls int) [][]int {
	var out [][]int
	var extend func(path []int, visited map[int]bool)
	extend = func(path []int, visited map[int]bool) {
		last := path[len(path)-1]
		for next := path[0]; next <= pulls; next++ {
			if !edges[[2]int{last, next}] {
				continue
			}
			if next == path[0] {
				out = append(out, slices.Clone(path))
				continue
			}
			if !visited[next] {
				visited[next] = true
				extend(append(path, next), visited)
				visited[next] = false
			}
		}
	}
	for start := 1; start <= pulls; start++ {
		extend([]int{start}, map[int]bool{start: true})
	}
	return out
}

func TestGraph_DeadlocksMatchABruteForceCycleFinder(t *testing.T) {
	r := rand.New(rand.NewPCG(12, 5))
	withCycles := 0
	for round := range 3000 {
		queues := randomQueues(r)
		edges := referenceEdges(queues)
		cycles := referenceCycles(edges, 7)
		deadlocks := deadlock.NewGraph(queues).Deadlocks()
		if len(cycles) > 0 {
			withCycles++
		}
		where := fmt.Sprintf("round %d, edges %v", round, edges)

		// Every pull on a reference cycle is in exactly one deadlock, with
		// every other pull of that cycle; no other pull is in any.
		component := map[int]int{}
		for i, d := range deadlocks {
			for _, p := range d.Pulls {
				_, dup := component[p.Num]
				Assert(t, !dup, "%s: pull %d in two deadlocks", where, p.Num)
				component[p.Num] = i
			}
		}
		onCycle := map[int]bool{}
		for _, c := range cycles {
			for _, p := range c {
				onCycle[p] = true
				Assert(t, component[p] == component[c[0]], "%s: cycle %v split over deadlocks", where, c)
			}
		}
		for p := range component {
			Assert(t, onCycle[p], "%s: pull %d is in a deadlock but on no cycle", where, p)
		}
		for p := range onCycle {
			_, in := component[p]
			Assert(t, in, "%s: pull %d is on a cycle but in no deadlock", where, p)
		}

		for _, d := range deadlocks {
			// The representative is one of the reference cycles, through
			// the deadlock's first pull and as short as any through it.
			var path []int
			for i, w := range d.Cycle {
				Assert(t, edges[[2]int{w.Waiter.Num, w.Holder.Num}], "%s: cycle edge %v is no wait", where, w)
				next := d.Cycle[(i+1)%len(d.Cycle)]
				Assert(t, w.Holder == next.Waiter, "%s: cycle %v does not chain", where, d.Cycle)
				path = append(path, w.Waiter.Num)
			}
			Equals(t, d.Pulls[0].Num, path[0])
			Assert(t, slices.ContainsFunc(cycles, func(c []int) bool { return slices.Equal(c, path) }),
				"%s: cycle %v is not elementary", where, path)
			for _, c := range cycles {
				Assert(t, c[0] != path[0] || len(c) >= len(path), "%s: %v is shorter than %v", where, c, path)
			}
			// Waits are exactly the edges between its pulls.
			for _, w := range d.Waits {
				_, a := component[w.Waiter.Num]
				_, b := component[w.Holder.Num]
				Assert(t, a && b && component[w.Waiter.Num] == component[w.Holder.Num], "%s: wait %v leaves the deadlock", where, w)
			}
		}
	}
	t.Logf("%d of 3000 graphs have cycles", withCycles)
	// The generator must reach both kinds of graph often.
	Assert(t, withCycles > 600 && withCycles < 2400, "%d of 3000 graphs have cycles", withCycles)
}
