package deadlock

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// Deadlock is one strongly connected component of the wait-for graph with
// more than one pull: every pull in it waits, directly or through others of
// it, for a lock another of them holds. A plan needs every lock it asks for,
// so none of them can ever finish while they all stay; one leaving its queues
// and freeing its locks (`atlantis unlock`) can break it.
//
// A component is reported once, however many elementary cycles it holds
// (their number can grow exponentially with its size), with one of them as
// Cycle to name in comments. Resolving a component by freeing one victim may
// leave a smaller one, which the next check reports as a new deadlock.
type Deadlock struct {
	// ID names the deadlock the same on every replica: a hash of its pulls
	// and of the locks they wait for.
	ID string
	// Pulls are the pulls in the deadlock, in order.
	Pulls []enhanced.PullRef
	// Waits are the edges between them, ordered by waiter, holder, lock key.
	Waits []Wait
	// Cycle is a shortest elementary cycle through Pulls[0]: Cycle[i].Holder
	// is Cycle[i+1].Waiter, and the last holder is the first waiter.
	Cycle []Wait
}

// Locks returns the keys of the locks waited for in the deadlock, in order.
func (d Deadlock) Locks() []string {
	var keys []string
	seen := map[string]bool{}
	for _, w := range d.Waits {
		if !seen[w.Key()] {
			seen[w.Key()] = true
			keys = append(keys, w.Key())
		}
	}
	slices.Sort(keys)
	return keys
}

// Deadlocks returns the graph's deadlocks, ordered by their first pull.
func (g *Graph) Deadlocks() []Deadlock {
	var out []Deadlock
	for _, component := range g.components() {
		if len(component) < 2 {
			continue // no pull waits for itself (see Graph)
		}
		out = append(out, g.deadlock(component))
	}
	slices.SortFunc(out, func(a, b Deadlock) int { return comparePulls(a.Pulls[0], b.Pulls[0]) })
	return out
}

func (g *Graph) deadlock(component []enhanced.PullRef) Deadlock {
	slices.SortFunc(component, comparePulls)
	in := map[enhanced.PullRef]bool{}
	for _, p := range component {
		in[p] = true
	}
	inside := func(w *Wait) bool { return in[w.Waiter] && in[w.Holder] }
	n := 0
	for i := range g.waits {
		if inside(&g.waits[i]) {
			n++
		}
	}
	d := Deadlock{Pulls: component, Waits: make([]Wait, 0, n)}
	for i := range g.waits {
		if inside(&g.waits[i]) {
			d.Waits = append(d.Waits, g.waits[i])
		}
	}
	d.Cycle = g.shortestCycle(component[0], in)
	d.ID = deadlockID(d)
	return d
}

// deadlockID hashes the sorted pulls and lock keys: two replicas reading the
// same deadlock name it alike, and a deadlock that changed (a pull or a lock
// more or less) is a new one.
func deadlockID(d Deadlock) string {
	var b strings.Builder
	for _, p := range d.Pulls {
		b.WriteString(pullKey(p))
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	for _, k := range d.Locks() {
		b.WriteString(k)
		b.WriteByte('\n')
	}
	sum := sha256.Sum256([]byte(b.String()))
	return hex.EncodeToString(sum[:12])
}

// components runs Tarjan's algorithm: each pull's strongly connected
// component, in an order of no interest (Deadlocks sorts). Recursion depth
// is at most the number of pulls that wait, a few hundred at most.
func (g *Graph) components() [][]enhanced.PullRef {
	index := map[enhanced.PullRef]int{}
	low := map[enhanced.PullRef]int{}
	onStack := map[enhanced.PullRef]bool{}
	var stack []enhanced.PullRef
	var out [][]enhanced.PullRef
	next := 0
	var visit func(p enhanced.PullRef)
	visit = func(p enhanced.PullRef) {
		index[p], low[p] = next, next
		next++
		stack = append(stack, p)
		onStack[p] = true
		for _, i := range g.out[p] {
			q := g.waits[i].Holder
			if _, seen := index[q]; !seen {
				visit(q)
				low[p] = min(low[p], low[q])
			} else if onStack[q] {
				low[p] = min(low[p], index[q])
			}
		}
		if low[p] != index[p] {
			return
		}
		var component []enhanced.PullRef
		for {
			q := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			onStack[q] = false
			component = append(component, q)
			if q == p {
				break
			}
		}
		out = append(out, component)
	}
	for _, p := range g.pulls {
		if _, seen := index[p]; !seen {
			visit(p)
		}
	}
	return out
}

// shortestCycle finds, breadth first inside the component, a shortest path
// from start back to itself; edges are tried in their sorted order, so every
// replica picks the same one. A strongly connected component of two or more
// pulls always has one.
func (g *Graph) shortestCycle(start enhanced.PullRef, in map[enhanced.PullRef]bool) []Wait {
	// via[p] is the index of the wait that first reached p.
	via := map[enhanced.PullRef]int{}
	frontier := []enhanced.PullRef{start}
	for len(frontier) > 0 {
		var nextFrontier []enhanced.PullRef
		for _, p := range frontier {
			for _, i := range g.out[p] {
				q := g.waits[i].Holder
				if !in[q] {
					continue
				}
				if q == start {
					return g.pathTo(p, start, via, i)
				}
				if _, seen := via[q]; !seen {
					via[q] = i
					nextFrontier = append(nextFrontier, q)
				}
			}
		}
		frontier = nextFrontier
	}
	return nil
}

// pathTo walks via back from last to start and closes the cycle with the
// wait closing.
func (g *Graph) pathTo(last, start enhanced.PullRef, via map[enhanced.PullRef]int, closing int) []Wait {
	cycle := []Wait{g.waits[closing]}
	for p := last; p != start; {
		w := g.waits[via[p]]
		cycle = append(cycle, w)
		p = w.Waiter
	}
	slices.Reverse(cycle)
	return cycle
}
