package deadlock_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/deadlock"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
)

const repo = "org/repo"

// pullLock is pull's lock of the project in dir, as Atlantis fills it in.
func pullLock(dir string, pull int) models.ProjectLock {
	lock := enhancedtest.NewLock(repo, dir, "default", "", pull)
	lock.Pull.BaseRepo = models.Repo{FullName: repo, Owner: "org", Name: "repo"}
	return lock
}

func pull(n int) enhanced.PullRef { return enhanced.PullRef{RepoFullName: repo, Num: n} }

// q is the queue of dir: held by holder (0: free), with durable entries of
// the waiting pulls in order.
func q(dir string, holder int, waiting ...int) enhanced.LockQueue {
	lq := enhanced.LockQueue{Project: models.Project{RepoFullName: repo, Path: dir}, Workspace: "default"}
	if holder != 0 {
		h := pullLock(dir, holder)
		lq.Holder, lq.HolderID = &h, fmt.Sprintf("token-%s-%d", dir, holder)
	}
	for i, w := range waiting {
		lq.Entries = append(lq.Entries, enhanced.QueueEntry{ID: fmt.Sprintf("entry-%s-%d", dir, w), Lock: pullLock(dir, w),
			Position: i + 1, Enqueued: time.Unix(int64(1000+i), 0)})
	}
	return lq
}

// withWaiter adds a synchronous waiter of pull to the queue.
func withWaiter(lq enhanced.LockQueue, pull int) enhanced.LockQueue {
	lq.Entries = append(lq.Entries, enhanced.QueueEntry{ID: fmt.Sprintf("wait-%d", pull), Lock: pullLock(lq.Project.Path, pull), Synchronous: true})
	return lq
}

// describe reduces deadlocks to their pulls and their cycle's pulls and
// locks, for comparing with a table.
func describe(ds []deadlock.Deadlock) []string {
	var out []string
	for _, d := range ds {
		s := ""
		for _, p := range d.Pulls {
			s += fmt.Sprintf("#%d ", p.Num)
		}
		s += "cycle"
		for _, w := range d.Cycle {
			s += fmt.Sprintf(" #%d-%s->#%d", w.Waiter.Num, w.Lock.Project.Path, w.Holder.Num)
		}
		out = append(out, s)
	}
	return out
}

func TestGraph_Deadlocks(t *testing.T) {
	cases := []struct {
		name   string
		queues []enhanced.LockQueue
		want   []string
	}{
		{"nothing queued", nil, nil},
		{"two pulls wait for each other",
			[]enhanced.LockQueue{q("a", 1, 2), q("b", 2, 1)},
			[]string{"#1 #2 cycle #1-b->#2 #2-a->#1"}},
		{"three in a ring",
			[]enhanced.LockQueue{q("a", 1, 3), q("b", 2, 1), q("c", 3, 2)},
			[]string{"#1 #2 #3 cycle #1-b->#2 #2-c->#3 #3-a->#1"}},
		{"a chain is no deadlock",
			[]enhanced.LockQueue{q("a", 1, 2), q("b", 2, 3), q("c", 3, 4)},
			nil},
		{"a diamond is no deadlock",
			[]enhanced.LockQueue{q("a", 2, 1), q("b", 3, 1), q("c", 4, 2, 3)},
			nil},
		{"a pull queued for a lock it holds waits for nobody",
			[]enhanced.LockQueue{q("a", 1, 1), q("b", 2, 2, 1)},
			nil},
		{"a pull waiting across its own projects waits for nobody",
			[]enhanced.LockQueue{q("a", 1, 1), q("b", 1, 1), q("c", 2, 1)},
			nil},
		{"a free lock's queue waits for nobody: it was just released and is being handed on",
			[]enhanced.LockQueue{q("a", 0, 2), q("b", 2, 1)},
			nil},
		{"synchronous waiters end by themselves and are no edge",
			[]enhanced.LockQueue{withWaiter(q("a", 1), 2), q("b", 2, 1)},
			nil},
		{"two locks between the same pulls: one deadlock",
			[]enhanced.LockQueue{q("a", 1, 2), q("b", 2, 1), q("c", 2, 1), q("d", 1, 2)},
			[]string{"#1 #2 cycle #1-b->#2 #2-a->#1"}},
		{"two separate deadlocks",
			[]enhanced.LockQueue{q("a", 1, 2), q("b", 2, 1), q("c", 3, 4), q("d", 4, 3)},
			[]string{"#1 #2 cycle #1-b->#2 #2-a->#1", "#3 #4 cycle #3-d->#4 #4-c->#3"}},
		{"two rings through one pull are one deadlock, with the shortest cycle",
			[]enhanced.LockQueue{q("a", 1, 2), q("b", 2, 3), q("c", 3, 1), q("d", 1, 4), q("e", 4, 1)},
			[]string{"#1 #2 #3 #4 cycle #1-e->#4 #4-d->#1"}},
		{"a pull waiting for a deadlock is not part of it",
			[]enhanced.LockQueue{q("a", 1, 2, 5), q("b", 2, 1)},
			[]string{"#1 #2 cycle #1-b->#2 #2-a->#1"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			Equals(t, c.want, describe(deadlock.NewGraph(c.queues).Deadlocks()))
		})
	}
}

func TestDeadlock_IDNamesPullsAndLocks(t *testing.T) {
	id := func(queues ...enhanced.LockQueue) string {
		ds := deadlock.NewGraph(queues).Deadlocks()
		Equals(t, 1, len(ds))
		return ds[0].ID
	}
	first := id(q("a", 1, 2), q("b", 2, 1))
	Equals(t, first, id(q("b", 2, 1), q("a", 1, 2)))
	Assert(t, first != id(q("a", 1, 2), q("c", 2, 1)), "another lock, another deadlock")
	Assert(t, first != id(q("a", 1, 3), q("b", 3, 1)), "another pull, another deadlock")
	Assert(t, first != id(q("a", 1, 2), q("b", 2, 1), q("c", 1, 2)), "a lock more, another deadlock")
}

func TestPullOf_RepoAndNumber(t *testing.T) {
	lock := pullLock("a", 7)
	Equals(t, pull(7), deadlock.PullOf(lock))
	lock.Pull.BaseRepo = models.Repo{}
	Equals(t, pull(7), deadlock.PullOf(lock))
}
