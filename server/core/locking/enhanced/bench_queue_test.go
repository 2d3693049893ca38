package enhanced_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"
	. "github.com/runatlantis/atlantis/testing"
	bolt "go.etcd.io/bbolt"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/queue"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// The queue benchmarks measure the priority queue on its two backends, the
// BoltDB backend with its queue file (in process) and the Redis backend on
// loopback, at the backend's interface, which the adapter and the worker
// call:
//   - hand-over: the holder's release, until the backend shows the queue's
//     head holding the lock (the release call and one GetLock: the hand-over
//     happens inside the release);
//   - enqueue: one Enqueue that joins at the tail;
//   - both at queue depths 1, 10, 100 and 1 000, interleaved round by round,
//     with the ratio of depth 1 000 to depth 10 per round (1 is flat; O(n)
//     would be 100);
//   - release to re-plan: the holder's release until the queue worker, as
//     the server runs it, calls the re-planner for the head, through the
//     notice, its claim and its delivery (the VCS client and the planner are
//     stand-ins that only record the call).

const (
	queueRounds = 15
	// queueBlock hand-overs (each followed by the enqueue that keeps the
	// depth) per depth per round.
	queueBlock   = 20
	replanRounds = 15
	replanBlock  = 10
)

var queueDepths = []int{1, 10, 100, 1000}

// queueBackend is a backend with durable queues, as the benchmarks need.
type queueBackend interface {
	enhanced.Backend
	enhanced.QueueBackend
}

type queueSide struct {
	name    string
	backend queueBackend
	// ref times the unit of cost the side's operations are made of, which
	// the hand-over is also reported in: one synced bbolt write on the same
	// disk, or one PING round trip to the same Redis.
	refName string
	ref     func() time.Duration
}

func queueSides(t *testing.T) []queueSide {
	dir := t.TempDir()
	bolt := backends.NewBoltDB(guard(t, openBolt(t, dir)), nil)
	t.Cleanup(func() { bolt.Close() }) // nolint: errcheck
	Ok(t, bolt.OpenQueues(filepath.Join(dir, "enhanced-locking-queue.db")))
	client := redistest.Start(t).Client(t)
	return []queueSide{
		{"boltdb", bolt, "bbolt-write", boltWrite(t, filepath.Join(dir, "reference.db"))},
		{"redis", openRedis(t, client), "ping", func() time.Duration {
			start := time.Now()
			Ok(t, client.Ping(context.Background()).Err())
			return time.Since(start)
		}},
	}
}

// boltWrite returns a function that times one synced write to a bbolt file
// at path.
func boltWrite(t *testing.T, path string) func() time.Duration {
	db, err := bolt.Open(path, 0o600, nil)
	Ok(t, err)
	t.Cleanup(func() { db.Close() }) // nolint: errcheck
	n := 0
	return func() time.Duration {
		n++
		start := time.Now()
		Ok(t, db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("reference"))
			if err != nil {
				return err
			}
			return b.Put([]byte(fmt.Sprintf("%08d", n)), []byte("value"))
		}))
		return time.Since(start)
	}
}

// queueChain is one lock whose queue is kept depth entries deep: every
// hand-over is followed by the releasing pull joining the queue's tail
// again.
type queueChain struct {
	b      queueBackend
	path   string
	holder int
	// queued are the queued pulls, head first.
	queued []int
}

func newQueueChain(t *testing.T, b queueBackend, depth int) *queueChain {
	c := &queueChain{b: b, path: fmt.Sprintf("depth%d", depth), holder: 1}
	acquired, _, err := b.TryLock(context.Background(), enhanced.LockRequest{Lock: c.lock(1)})
	Ok(t, err)
	Assert(t, acquired, "chain lock not acquired")
	for pull := 2; pull <= depth+1; pull++ {
		c.enqueue(t, pull)
	}
	drainNotices(t, b)
	return c
}

func (c *queueChain) lock(pull int) models.ProjectLock {
	return enhancedtest.NewLock("org/repo", c.path, "default", "", pull)
}

func (c *queueChain) enqueue(t *testing.T, pull int) time.Duration {
	start := time.Now()
	res, err := c.b.Enqueue(context.Background(), enhanced.QueueRequest{Lock: c.lock(pull), Timeout: time.Hour})
	elapsed := time.Since(start)
	Ok(t, err)
	Assert(t, res.Joined, "pull %d did not join the queue of %s", pull, c.path)
	c.queued = append(c.queued, pull)
	return elapsed
}

// handOver releases the lock and returns the time until the queue's head is
// seen holding it.
func (c *queueChain) handOver(t *testing.T) time.Duration {
	ctx := context.Background()
	l := c.lock(c.holder)
	start := time.Now()
	_, err := c.b.UnlockIfOwnedByPull(ctx, l.Project, l.Workspace, c.holder)
	Ok(t, err)
	got, err := c.b.GetLock(ctx, l.Project, l.Workspace)
	elapsed := time.Since(start)
	Ok(t, err)
	Assert(t, got != nil && got.Pull.Num == c.queued[0], "lock %s not handed to pull %d: %+v", c.path, c.queued[0], got)
	c.holder, c.queued = c.queued[0], c.queued[1:]
	return elapsed
}

// cycles runs n hand-overs, each followed by the released pull's enqueue,
// and returns the time of each.
func (c *queueChain) cycles(t *testing.T, n int) (handOvers, enqueues []time.Duration) {
	for range n {
		released := c.holder
		handOvers = append(handOvers, c.handOver(t))
		enqueues = append(enqueues, c.enqueue(t, released))
	}
	drainNotices(t, c.b)
	return handOvers, enqueues
}

// drainNotices acknowledges every notice, as the worker would, so the
// outbox stays small.
func drainNotices(t *testing.T, b queueBackend) {
	ctx := context.Background()
	for {
		notices, err := b.ClaimNotices(ctx, time.Minute, 1000)
		Ok(t, err)
		for _, n := range notices {
			Ok(t, b.AckNotice(ctx, n))
		}
		if len(notices) < 1000 {
			return
		}
	}
}

func percentile(xs []time.Duration, p int) time.Duration {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[(len(s)-1)*p/100]
}

func perSecond(d time.Duration) float64 { return float64(time.Second) / float64(d) }

// benchQueue prints the queue's BENCH lines.
func benchQueue(t *testing.T) {
	for _, side := range queueSides(t) {
		benchQueueDepths(t, side)
	}
	benchReplan(t)
}

// benchQueueDepths measures hand-overs and enqueues at every depth of
// queueDepths, the depths taking turns block by block and round by round.
func benchQueueDepths(t *testing.T, side queueSide) {
	chains := make([]*queueChain, len(queueDepths))
	for i, d := range queueDepths {
		chains[i] = newQueueChain(t, side.backend, d)
		chains[i].cycles(t, 5) // warm up
	}
	handOvers := make([][]time.Duration, len(queueDepths))
	enqueues := make([][]time.Duration, len(queueDepths))
	var refs []time.Duration
	// Per round, each depth's median, for the per-round ratios.
	var handRatios, enqRatios, refRatios []float64
	for round := range queueRounds {
		var roundRef []time.Duration
		for range queueBlock {
			roundRef = append(roundRef, side.ref())
		}
		refs = append(refs, roundRef...)
		roundHand := make([]time.Duration, len(queueDepths))
		roundEnq := make([]time.Duration, len(queueDepths))
		for j := range queueDepths {
			i := (round + j) % len(queueDepths)
			h, e := chains[i].cycles(t, queueBlock)
			handOvers[i], enqueues[i] = append(handOvers[i], h...), append(enqueues[i], e...)
			roundHand[i], roundEnq[i] = median(h), median(e)
		}
		deep, shallow := slices.Index(queueDepths, 1000), slices.Index(queueDepths, 10)
		handRatios = append(handRatios, float64(roundHand[deep])/float64(roundHand[shallow]))
		enqRatios = append(enqRatios, float64(roundEnq[deep])/float64(roundEnq[shallow]))
		refRatios = append(refRatios, float64(roundHand[0])/float64(median(roundRef)))
	}
	hand, enq := fmt.Sprintf("queue-handover %s", side.name), fmt.Sprintf("queue-enqueue %s", side.name)
	for i, d := range queueDepths {
		hand += fmt.Sprintf(" depth=%d:p50=%s,p99=%s,ops/s=%.0f", d, us(percentile(handOvers[i], 50)), us(percentile(handOvers[i], 99)), perSecond(median(handOvers[i])))
		enq += fmt.Sprintf(" depth=%d:p50=%s,p99=%s,ops/s=%.0f", d, us(percentile(enqueues[i], 50)), us(percentile(enqueues[i], 99)), perSecond(median(enqueues[i])))
	}
	benchLine(t, "%s depth1000/depth10=%.2fx (median of %d rounds of %d)", hand, median(handRatios), queueRounds, queueBlock)
	benchLine(t, "queue-handover-cost %s %s:p50=%s,p99=%s depth1-handover/%s=%.2fx (median of %d rounds)", side.name, side.refName, us(percentile(refs, 50)), us(percentile(refs, 99)), side.refName, median(refRatios), queueRounds)
	benchLine(t, "%s depth1000/depth10=%.2fx (median of %d rounds of %d)", enq, median(enqRatios), queueRounds, queueBlock)
}

// stampingPlanner records when the worker asks for a re-plan.
type stampingPlanner struct {
	planned chan time.Time
}

func (p stampingPlanner) Replan(_ context.Context, _ models.ProjectLock, start func() error) error {
	if err := start(); err != nil {
		return err
	}
	p.planned <- time.Now()
	return nil
}

// quietVCS is the VCS client of the worker: it posts nothing, and says when
// a delivery ended (the worker hides the position comments of the pull that
// left the queue last).
type quietVCS struct {
	delivered chan struct{}
}

func (quietVCS) CreateComment(logging.SimpleLogging, models.Repo, int, string, string) error {
	return nil
}

func (v quietVCS) HidePrevCommandComments(logging.SimpleLogging, models.Repo, int, string, string) error {
	v.delivered <- struct{}{}
	return nil
}

// replanSide is one backend with a queue worker running as the server runs
// it (default poll and lease, auto-plan on).
type replanSide struct {
	name    string
	chain   *queueChain
	planned chan time.Time
	vcs     quietVCS
}

func newReplanSide(t *testing.T, side queueSide) *replanSide {
	s := &replanSide{name: side.name, planned: make(chan time.Time, 1), vcs: quietVCS{delivered: make(chan struct{}, 16)}}
	notifier := queue.NewNotifier(side.backend, s.vcs, true, nil)
	w := queue.NewWorker(side.backend, notifier, stampingPlanner{s.planned}, queue.WorkerOptions{AutoPlan: true})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
	s.chain = &queueChain{b: side.backend, path: "replan", holder: 1}
	acquired, _, err := side.backend.TryLock(context.Background(), enhanced.LockRequest{Lock: s.chain.lock(1)})
	Ok(t, err)
	Assert(t, acquired, "replan lock not acquired")
	s.chain.enqueue(t, 2)
	return s
}

// sample times one release until the worker starts the head's re-plan, and
// waits for that delivery to end before the released pull queues again.
func (s *replanSide) sample(t *testing.T) time.Duration {
	released := s.chain.holder
	start := time.Now()
	s.chain.handOver(t)
	var planned time.Time
	select {
	case planned = <-s.planned:
	case <-time.After(time.Minute):
		t.Fatalf("%s: no re-plan within a minute of the release", s.name)
	}
	select {
	case <-s.vcs.delivered:
	case <-time.After(time.Minute):
		t.Fatalf("%s: the delivery did not end within a minute", s.name)
	}
	s.chain.enqueue(t, released)
	return planned.Sub(start)
}

// benchReplan measures release to re-plan on both backends, in turn.
func benchReplan(t *testing.T) {
	var sides []*replanSide
	for _, side := range queueSides(t) {
		sides = append(sides, newReplanSide(t, side))
	}
	samples := make([][]time.Duration, len(sides))
	for round := range replanRounds {
		for j := range sides {
			i := (round + j) % len(sides)
			for range replanBlock {
				samples[i] = append(samples[i], sides[i].sample(t))
			}
		}
	}
	for i, s := range sides {
		benchLine(t, "queue-release-to-replan %s p50=%s p99=%s (%d samples, worker with the server's defaults)", s.name, ms(percentile(samples[i], 50)), ms(percentile(samples[i], 99)), len(samples[i]))
	}
}

// TestBenchQueue prints the queue's BENCH lines alone. It runs only with
// ATLANTIS_BENCH_SUMMARY=1 (TestBenchSummary prints them too).
func TestBenchQueue(t *testing.T) {
	if os.Getenv("ATLANTIS_BENCH_SUMMARY") != "1" {
		t.Skip("set ATLANTIS_BENCH_SUMMARY=1 to run the benchmarks and print their summary")
	}
	benchQueue(t)
}
