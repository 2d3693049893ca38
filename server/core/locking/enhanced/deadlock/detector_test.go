package deadlock_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/core/boltdb"
	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"
	. "github.com/runatlantis/atlantis/testing"
	tally "github.com/uber-go/tally/v4"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/deadlock"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/legacydb"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// comments records the comments of every replica.
type comments struct {
	mu   sync.Mutex
	list []posted
}

type posted struct {
	pull int
	body string
}

func (c *comments) CreateComment(_ logging.SimpleLogging, _ models.Repo, pullNum int, comment string, _ string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.list = append(c.list, posted{pullNum, comment})
	return nil
}

func (c *comments) HidePrevCommandComments(logging.SimpleLogging, models.Repo, int, string, string) error {
	return nil
}

// starting counts, per pull, the comments starting with heading.
func (c *comments) starting(heading string) map[int]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[int]int{}
	for _, p := range c.list {
		if strings.HasPrefix(p.body, heading) {
			out[p.pull]++
		}
	}
	return out
}

func (c *comments) of(pull int) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, p := range c.list {
		if p.pull == pull {
			out = append(out, p.body)
		}
	}
	return out
}

// backendReleaser frees victims straight in the backend, whose release hands
// each lock to the next in its queue with a notice, as the server's does.
type backendReleaser struct {
	queues enhanced.QueueBackend
	locks  enhanced.Backend
}

func (r backendReleaser) LeaveQueues(ctx context.Context, p enhanced.PullRef) ([]enhanced.QueueEntry, error) {
	return r.queues.LeaveQueues(ctx, p.RepoFullName, p.Num)
}

func (r backendReleaser) Release(ctx context.Context, lock models.ProjectLock) (bool, error) {
	freed, err := r.locks.UnlockIfOwnedByPull(ctx, lock.Project, lock.Workspace, lock.Pull.Num)
	return freed != nil, err
}

// guard records which pulls a detector held, and checks it let go.
type guard struct {
	mu   sync.Mutex
	held []int
	open int
}

func (g *guard) Hold(_ context.Context, p enhanced.PullRef) (func(), error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.held = append(g.held, p.Num)
	g.open++
	return func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		g.open--
	}, nil
}

// queueingBackend is what a replica's detector runs on.
type queueingBackend interface {
	enhanced.Backend
	enhanced.QueueBackend
}

// replica is one Atlantis replica's backend and detector.
type replica struct {
	backend  queueingBackend
	detector *deadlock.Detector
	scope    tally.TestScope
}

type fleet struct {
	replicas []*replica
	comments *comments
	guard    *guard
}

// newRedisFleet is two replicas on one Redis, each with its own backend and
// detector, claiming in Redis.
func newRedisFleet(t *testing.T, resolution deadlock.Resolution) *fleet {
	t.Helper()
	srv := redistest.Start(t)
	f := &fleet{comments: &comments{}, guard: &guard{}}
	for range 2 {
		b, err := backends.NewRedis(srv.Client(t), backends.RedisOptions{})
		Ok(t, err)
		t.Cleanup(func() { _ = b.Close() })
		f.add(t, b, b, resolution)
	}
	return f
}

func (f *fleet) add(t *testing.T, b queueingBackend, claims deadlock.Claims, resolution deadlock.Resolution) {
	t.Helper()
	scope := tally.NewTestScope("", nil)
	d, err := deadlock.NewDetector(b, claims, f.comments, deadlock.Options{
		Resolution: resolution,
		Guard:      f.guard,
		Releaser:   backendReleaser{queues: b, locks: b},
		Scope:      scope,
	})
	Ok(t, err)
	f.replicas = append(f.replicas, &replica{backend: b, detector: d, scope: scope})
}

// on is the backend of the replica pull's requests go through: pulls
// alternate between replicas.
func (f *fleet) on(pull int) queueingBackend {
	return f.replicas[pull%len(f.replicas)].backend
}

func (f *fleet) lock(t *testing.T, dir string, pull int) {
	t.Helper()
	acquired, _, err := f.on(pull).TryLock(context.Background(), enhanced.LockRequest{Lock: pullLock(dir, pull)})
	Ok(t, err)
	Assert(t, acquired, "pull %d did not get %s", pull, dir)
}

// queue puts pull in dir's queue, at priority p, from the replica after its
// own, so each queue has entries of both replicas' making.
func (f *fleet) queue(t *testing.T, dir string, pull int, p enhanced.Priority) {
	t.Helper()
	res, err := f.on(pull+1).Enqueue(context.Background(), enhancedtest.QueueRequest(pullLock(dir, pull), p, time.Hour))
	Ok(t, err)
	Assert(t, res.Queued, "pull %d not queued for %s", pull, dir)
	// Entries record their time to the millisecond: the next one is later.
	time.Sleep(3 * time.Millisecond)
}

func dir(i int) string { return fmt.Sprintf("dir%d", i) }

// ring makes pulls 1..n deadlock: pull i holds dir i and queues for dir
// i+1, held by pull i+1; pull n queues for dir 1. Pull n queues last.
func (f *fleet) ring(t *testing.T, n int, priority map[int]enhanced.Priority) {
	t.Helper()
	for i := 1; i <= n; i++ {
		f.lock(t, dir(i), i)
	}
	for i := 1; i <= n; i++ {
		f.queue(t, dir(i%n+1), i, priority[i])
	}
}

// checkAtOnce runs one check on every replica at the same time.
func (f *fleet) checkAtOnce(t *testing.T) []deadlock.Outcome {
	t.Helper()
	var mu sync.Mutex
	var all []deadlock.Outcome
	var wg sync.WaitGroup
	start := make(chan struct{})
	for _, r := range f.replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			outcomes, err := r.detector.Check(context.Background())
			Ok(t, err)
			mu.Lock()
			all = append(all, outcomes...)
			mu.Unlock()
		}()
	}
	close(start)
	wg.Wait()
	for _, o := range all {
		Ok(t, o.Err)
	}
	return all
}

func claimed(outcomes []deadlock.Outcome) []deadlock.Outcome {
	var out []deadlock.Outcome
	for _, o := range outcomes {
		if o.Claimed {
			out = append(out, o)
		}
	}
	return out
}

// counter sums a counter over the fleet's replicas.
func (f *fleet) counter(name string, tags map[string]string) int64 {
	var sum int64
	for _, r := range f.replicas {
		for _, c := range r.scope.Snapshot().Counters() {
			if c.Name() == name && fmt.Sprint(c.Tags()) == fmt.Sprint(tags) {
				sum += c.Value()
			}
		}
	}
	return sum
}

func everyPullOnce(n int) map[int]int {
	want := map[int]int{}
	for i := 1; i <= n; i++ {
		want[i] = 1
	}
	return want
}

// eachRing runs test on a fresh fleet of two replicas whose pulls deadlock
// in a ring of 2, 3 and 10, after both replicas checked at once; won is what
// the one that claimed the deadlock did.
func eachRing(t *testing.T, resolution deadlock.Resolution, test func(t *testing.T, f *fleet, n int, won deadlock.Outcome)) {
	for _, n := range []int{2, 3, 10} {
		t.Run(fmt.Sprintf("%d pulls", n), func(t *testing.T) {
			f := newRedisFleet(t, resolution)
			f.ring(t, n, nil)
			won := claimed(f.checkAtOnce(t))
			Equals(t, 1, len(won))
			test(t, f, n, won[0])
		})
	}
}

func TestDetector_NotifyCommentsOnEveryPullOfADeadlockOnceAcrossReplicas(t *testing.T) {
	eachRing(t, deadlock.Notify, func(t *testing.T, f *fleet, n int, won deadlock.Outcome) {
		Equals(t, n, len(won.Deadlock.Pulls))
		Equals(t, n, len(won.Deadlock.Cycle))
		Equals(t, everyPullOnce(n), f.comments.starting(deadlock.DetectedHeading))

		// Still there at the next checks: told once is enough.
		Equals(t, 0, len(claimed(f.checkAtOnce(t))))
		Equals(t, 0, len(claimed(f.checkAtOnce(t))))
		Equals(t, everyPullOnce(n), f.comments.starting(deadlock.DetectedHeading))

		// Pull 1's comment names every pull and each lock it waits for.
		body := f.comments.of(1)[0]
		for i := 1; i <= n; i++ {
			Assert(t, strings.Contains(body, fmt.Sprintf("`%s` (workspace `default`)", dir(i))), "lock %s not named:\n%s", dir(i), body)
			Assert(t, strings.Contains(body, fmt.Sprintf("[#%d](", i)), "pull %d not named:\n%s", i, body)
		}
		Assert(t, strings.Contains(body, "`atlantis unlock`"), "no way out named:\n%s", body)
		Equals(t, int64(1), f.counter("deadlocks_detected_total", nil))
		Equals(t, int64(1), f.counter("deadlocks_resolved_total", map[string]string{"mode": "notify"}))
		// Nothing was freed.
		for i := 1; i <= n; i++ {
			entries, err := f.on(i).PullEntries(context.Background(), repo, i)
			Ok(t, err)
			Equals(t, 1, len(entries))
		}
	})
}

func TestDetector_ReleaseVictimFreesTheYoungestPullOnceAcrossReplicas(t *testing.T) {
	eachRing(t, deadlock.ReleaseVictim, func(t *testing.T, f *fleet, n int, won deadlock.Outcome) {
		// Every pull is normal: the one that queued last gives way. It
		// held dir n, which pull n-1 waited for.
		Equals(t, pull(n), *won.Victim)
		Equals(t, []int{n}, f.guard.held)
		Equals(t, 0, f.guard.open)
		Equals(t, 1, len(won.Freed))
		Equals(t, dir(n), won.Freed[0].Project.Path)
		f.assertFreed(t, n, dir(n), n-1)

		Equals(t, everyPullOnce(n), f.comments.starting(deadlock.ResolvedHeading))
		Equals(t, map[int]int{}, f.comments.starting(deadlock.DetectedHeading))
		victimComment := f.comments.of(n)[0]
		Assert(t, strings.Contains(victimComment, "`atlantis plan` to plan again"), "the victim is not told what next:\n%s", victimComment)
		Assert(t, strings.Contains(f.comments.of(1)[0], fmt.Sprintf("[#%d](", n)), "pull 1 is not told who gave way")

		// What is left is a chain: nothing more to do.
		Equals(t, 0, len(claimed(f.checkAtOnce(t))))
		Equals(t, int64(1), f.counter("deadlocks_detected_total", nil))
		Equals(t, int64(1), f.counter("deadlocks_resolved_total", map[string]string{"mode": "release-victim"}))
	})
}

// assertFreed checks that victim left every queue and that lock passed to
// next, with a hand-over notice for a replica to deliver.
func (f *fleet) assertFreed(t *testing.T, victim int, dir string, next int) {
	t.Helper()
	ctx := context.Background()
	entries, err := f.on(victim).PullEntries(ctx, repo, victim)
	Ok(t, err)
	Equals(t, 0, len(entries))
	held, err := f.on(next).GetLock(ctx, pullLock(dir, next).Project, "default")
	Ok(t, err)
	Assert(t, held != nil && held.Pull.Num == next, "%s is held by %v, want pull %d", dir, held, next)
	notices, err := f.on(next).ClaimNotices(ctx, time.Minute, 100)
	Ok(t, err)
	Equals(t, 1, len(notices))
	Equals(t, enhanced.NoticeTransferred, notices[0].Kind)
	Equals(t, next, notices[0].Entry.Lock.Pull.Num)
}

func TestDetector_ReleaseVictimFreesTheLowestPriorityFirst(t *testing.T) {
	f := newRedisFleet(t, deadlock.ReleaseVictim)
	// Pull 1 queued first, but is the only low one.
	f.ring(t, 3, map[int]enhanced.Priority{1: enhanced.PriorityLow, 3: enhanced.PriorityHigh})
	won := claimed(f.checkAtOnce(t))
	Equals(t, 1, len(won))
	Equals(t, pull(1), *won[0].Victim)
	f.assertFreed(t, 1, dir(1), 3)
}

func TestDetector_ResolvesWhatAVictimLeaves(t *testing.T) {
	f := newRedisFleet(t, deadlock.ReleaseVictim)
	// Two rings through pull 1: 1 -> 2 -> 1 and 1 -> 3 -> 1, pull 2 low.
	// Freeing pull 2 leaves the ring of 1 and 3, freed at the next round.
	f.lock(t, "a", 1)
	f.lock(t, "b", 2)
	f.lock(t, "c", 3)
	f.lock(t, "d", 1)
	f.queue(t, "b", 1, enhanced.PriorityNormal)
	f.queue(t, "a", 2, enhanced.PriorityLow)
	f.queue(t, "c", 1, enhanced.PriorityNormal)
	f.queue(t, "d", 3, enhanced.PriorityNormal)

	outcomes, err := f.replicas[0].detector.Check(context.Background())
	Ok(t, err)
	won := claimed(outcomes)
	Equals(t, 2, len(won))
	Equals(t, pull(2), *won[0].Victim)
	Equals(t, 3, len(won[0].Deadlock.Pulls))
	Equals(t, 2, len(won[1].Deadlock.Pulls))
	Assert(t, won[0].Deadlock.ID != won[1].Deadlock.ID, "one deadlock acted on twice")
	Equals(t, 0, len(claimed(f.checkAtOnce(t))))
}

func TestDetector_NoDeadlockWhereNoneIs(t *testing.T) {
	cases := []struct {
		name  string
		build func(t *testing.T, f *fleet)
	}{
		{"a chain", func(t *testing.T, f *fleet) {
			for i := 1; i <= 4; i++ {
				f.lock(t, dir(i), i)
			}
			for i := 1; i < 4; i++ {
				f.queue(t, dir(i+1), i, enhanced.PriorityNormal)
			}
		}},
		{"a diamond", func(t *testing.T, f *fleet) {
			f.lock(t, "b", 2)
			f.lock(t, "c", 3)
			f.lock(t, "d", 4)
			f.queue(t, "b", 1, enhanced.PriorityNormal)
			f.queue(t, "c", 1, enhanced.PriorityNormal)
			f.queue(t, "d", 2, enhanced.PriorityNormal)
			f.queue(t, "d", 3, enhanced.PriorityNormal)
		}},
		{"one pull across its own projects", func(t *testing.T, f *fleet) {
			f.lock(t, "a", 1)
			f.lock(t, "b", 1)
			f.lock(t, "c", 2)
			f.queue(t, "c", 1, enhanced.PriorityNormal)
			// Asking for its own lock queues nothing.
			res, err := f.on(1).Enqueue(context.Background(), enhancedtest.QueueRequest(pullLock("a", 1), enhanced.PriorityNormal, time.Hour))
			Ok(t, err)
			Assert(t, !res.Queued, "queued for its own lock")
		}},
		{"a ring that was broken by a release", func(t *testing.T, f *fleet) {
			f.ring(t, 3, nil)
			_, err := f.on(2).UnlockByPull(context.Background(), repo, 2)
			Ok(t, err)
		}},
		{"a ring broken by a pull leaving its queues", func(t *testing.T, f *fleet) {
			f.ring(t, 2, nil)
			_, err := f.on(1).LeaveQueues(context.Background(), repo, 1)
			Ok(t, err)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newRedisFleet(t, deadlock.ReleaseVictim)
			c.build(t, f)
			Equals(t, []deadlock.Outcome(nil), f.checkAtOnce(t))
			Equals(t, 0, len(f.comments.of(1)))
			Equals(t, int64(0), f.counter("deadlocks_detected_total", nil))
		})
	}
}

// staleQueues answers Queues with a list read earlier, as a read of many
// queues one after the other can see them, and reads each queue afresh.
type staleQueues struct {
	queueingBackend
	snapshot []enhanced.LockQueue
}

func (s staleQueues) Queues(context.Context) ([]enhanced.LockQueue, error) { return s.snapshot, nil }

func TestDetector_ARingOnlyAStaleReadShowsIsNoDeadlock(t *testing.T) {
	f := newRedisFleet(t, deadlock.ReleaseVictim)
	ctx := context.Background()
	b := f.on(0)
	read := func(dir string) enhanced.LockQueue {
		q, err := b.Queue(ctx, pullLock(dir, 1).Project, "default")
		Ok(t, err)
		return q
	}
	// Pull 1 holds a, pull 2 holds b, pull 1 queues for b: the read of b
	// sees 1 waiting for 2. Then 2 lets b go (it passes to 1) and queues
	// for a: the read of a sees 2 waiting for 1. Together the two reads
	// show a ring that never was.
	f.lock(t, "a", 1)
	f.lock(t, "b", 2)
	f.queue(t, "b", 1, enhanced.PriorityNormal)
	staleB := read("b")
	_, err := b.UnlockByPull(ctx, repo, 2)
	Ok(t, err)
	f.queue(t, "a", 2, enhanced.PriorityNormal)
	snapshot := []enhanced.LockQueue{read("a"), staleB}
	Equals(t, 1, len(deadlock.NewGraph(snapshot).Deadlocks()))

	d, err := deadlock.NewDetector(staleQueues{b, snapshot}, deadlock.NewMemoryClaims(), f.comments, deadlock.Options{
		Resolution: deadlock.ReleaseVictim, Releaser: backendReleaser{queues: b, locks: b},
	})
	Ok(t, err)
	outcomes, err := d.Check(ctx)
	Ok(t, err)
	Equals(t, 1, len(outcomes))
	Assert(t, outcomes[0].Gone && !outcomes[0].Claimed, "acted on a ring that never was: %+v", outcomes[0])
	Equals(t, 0, len(f.comments.of(1)))
}

func TestDetector_BoltDB(t *testing.T) {
	upstream, err := boltdb.New(t.TempDir())
	Ok(t, err)
	t.Cleanup(func() { _ = upstream.Close() })
	legacy, err := legacydb.Guard(upstream, legacydb.Options{})
	Ok(t, err)
	b := backends.NewBoltDB(legacy, nil)
	t.Cleanup(func() { _ = b.Close() })
	Ok(t, b.OpenQueues(t.TempDir()+"/queue.db"))
	f := &fleet{comments: &comments{}, guard: &guard{}}
	f.add(t, b, deadlock.NewMemoryClaims(), deadlock.ReleaseVictim)
	f.ring(t, 3, nil)

	won := claimed(f.checkAtOnce(t))
	Equals(t, 1, len(won))
	Equals(t, pull(3), *won[0].Victim)
	f.assertFreed(t, 3, dir(3), 2)
	Equals(t, everyPullOnce(3), f.comments.starting(deadlock.ResolvedHeading))
}
