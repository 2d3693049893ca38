package queue_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/queue"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// gatedPlanner stands for the server's planner with the command runner in
// the test's hands: it waits for before (the pull's command lease) or ctx,
// calls start, says the plan started, and runs it until until is closed,
// returning result.
type gatedPlanner struct {
	before  chan struct{}
	started chan struct{}
	until   chan struct{}
	result  error
	plans   atomic.Int32
}

func newGatedPlanner() *gatedPlanner {
	p := &gatedPlanner{before: make(chan struct{}), started: make(chan struct{}), until: make(chan struct{})}
	close(p.before)
	return p
}

func (p *gatedPlanner) Replan(ctx context.Context, _ models.ProjectLock, start func() error) error {
	select {
	case <-p.before:
	case <-ctx.Done():
		return fmt.Errorf("%w: waiting for the command lease: %w", queue.ErrReplanInterrupted, ctx.Err())
	}
	if err := start(); err != nil {
		return err
	}
	p.plans.Add(1)
	close(p.started)
	<-p.until
	return p.result
}

// lease is the notice lease of every replica in these tests.
const lease = 300 * time.Millisecond

// replanScene is lock a handed from pull 1 to pull 10, with pull 99 queued
// behind, on a Redis and a GitHub that every replica shares; other is a
// replica whose planner plans at once.
type replanScene struct {
	srv    *redistest.Server
	github *fakeGitHub
	other  *deliverer
}

func newReplanScene(t *testing.T) *replanScene {
	t.Helper()
	s := &replanScene{srv: redistest.Start(t), github: &fakeGitHub{}}
	s.other = newDeliverer(t, s.srv, s.github, lease)
	handOverToPulls(t, s.other.backend, []string{"a"})
	return s
}

// worker is one more replica's worker, on client, re-planning with planner.
func (s *replanScene) worker(t *testing.T, client redis.UniversalClient, planner queue.Planner) (*queue.Worker, *backends.Redis) {
	t.Helper()
	b, err := backends.NewRedis(client, backends.RedisOptions{})
	Ok(t, err)
	return queue.NewWorker(b, queue.NewNotifier(b, s.github, true, nil), planner, queue.WorkerOptions{AutoPlan: true, Lease: lease}), b
}

// deliverUntil has the other replica deliver every 50 ms until cond holds,
// for at most within, and waits for the re-plans it started.
func (s *replanScene) deliverUntil(t *testing.T, within time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(within); !cond() && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		s.deliver(t)
	}
}

// deliver has the other replica deliver what is due, and waits for the
// re-plans it started.
func (s *replanScene) deliver(t *testing.T) {
	t.Helper()
	_, err := s.other.worker.DeliverDue(context.Background())
	Ok(t, err)
	s.other.worker.Wait()
}

// otherPlanned is how many re-plans the other replica ran.
func (s *replanScene) otherPlanned() int {
	return len(s.other.planner.planned())
}

// settled checks that pull 10 was told of its hand-over once and that, once
// any claim lapsed, nothing is left to deliver.
func (s *replanScene) settled(t *testing.T) {
	t.Helper()
	Equals(t, map[int]int{10: 1}, s.github.starting(handedOver))
	time.Sleep(lease + 200*time.Millisecond)
	Equals(t, 0, len(claimAllNotices(t, s.other.backend)))
}

// TestWorker_AReplanWhoseReplicaDiedRunsAgain: the victim claims a
// hand-over, comments, starts the re-plan and dies while it runs: its
// connection to Redis is gone and its plan never returns. Once its claim
// lapses, the other replica re-plans the pull, once, without commenting
// again. (On main the victim acknowledged the notice as its plan started,
// and the pull got no plan.)
func TestWorker_AReplanWhoseReplicaDiedRunsAgain(t *testing.T) {
	s := newReplanScene(t)
	client := redis.NewClient(s.srv.Options())
	planner := newGatedPlanner()
	victim, b := s.worker(t, client, planner)
	// The dead process's goroutines end with the test, after its client
	// closed: nothing it does then reaches Redis.
	t.Cleanup(func() {
		close(planner.until)
		victim.Wait()
		_ = b.Close()
	})
	_, err := victim.DeliverDue(context.Background())
	Ok(t, err)
	<-planner.started
	Ok(t, client.Close())

	s.deliverUntil(t, 20*lease, func() bool { return s.otherPlanned() > 0 })
	Equals(t, 1, s.otherPlanned())
	Equals(t, 10, s.other.planner.planned()[0].Pull.Num)
	s.settled(t)
}

// TestWorker_ASlowReplanOnALiveReplicaRunsOnce: a re-plan that runs four
// leases long keeps its notice claimed, so another replica delivering all
// the while plans nothing; once it returns, the notice is acknowledged.
func TestWorker_ASlowReplanOnALiveReplicaRunsOnce(t *testing.T) {
	s := newReplanScene(t)
	planner := newGatedPlanner()
	slow, _ := s.worker(t, s.srv.Client(t), planner)
	_, err := slow.DeliverDue(context.Background())
	Ok(t, err)
	<-planner.started

	s.deliverUntil(t, 4*lease, func() bool { return false })
	close(planner.until)
	slow.Wait()
	Equals(t, int32(1), planner.plans.Load())
	Equals(t, 0, s.otherPlanned())
	s.settled(t)
}

// cutOff is a backend whose renewals fail while cut is set: a replica cut
// off from Redis, or frozen, while its re-plan waits.
type cutOff struct {
	*backends.Redis
	cut atomic.Bool
}

func (c *cutOff) RenewNotice(ctx context.Context, n enhanced.QueueNotice, lease time.Duration) error {
	if c.cut.Load() {
		return errors.New("cut off")
	}
	return c.Redis.RenewNotice(ctx, n, lease)
}

// TestWorker_AReplanWhoseClaimLapsedBeforeItStartsPlansNothing: a re-plan
// waits for its pull's command lease while its replica is cut off, so its
// claim lapses and another replica claims the notice and plans. When the
// first one gets the command lease, its last check finds the notice taken
// and it plans nothing.
func TestWorker_AReplanWhoseClaimLapsedBeforeItStartsPlansNothing(t *testing.T) {
	s := newReplanScene(t)
	b := &cutOff{Redis: newBackend(t, s.srv)}
	planner := newGatedPlanner()
	planner.before = make(chan struct{})
	late := queue.NewWorker(b, queue.NewNotifier(b, s.github, true, nil), planner, queue.WorkerOptions{AutoPlan: true, Lease: lease})
	_, err := late.DeliverDue(context.Background())
	Ok(t, err)
	b.cut.Store(true)

	s.deliverUntil(t, 20*lease, func() bool { return s.otherPlanned() > 0 })
	b.cut.Store(false)
	close(planner.before)
	close(planner.until)
	late.Wait()
	Equals(t, int32(0), planner.plans.Load())
	Equals(t, 1, s.otherPlanned())
	s.settled(t)
}

// TestWorker_AReplanIsLeftToTheNextClaimOrDone: how a re-plan ends decides
// whether the next claim of its notice plans again.
func TestWorker_AReplanIsLeftToTheNextClaimOrDone(t *testing.T) {
	cases := []struct {
		name   string
		result error
		again  bool
	}{
		{"its command lease was lost while it ran: planned again", fmt.Errorf("%w: the command lease was lost", queue.ErrReplanInterrupted), true},
		{"it ran and the plan failed: done", errors.New("the plan failed"), false},
		{"it ran: done", nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newReplanScene(t)
			planner := newGatedPlanner()
			planner.result = c.result
			close(planner.until)
			first, _ := s.worker(t, s.srv.Client(t), planner)
			_, err := first.DeliverDue(context.Background())
			Ok(t, err)
			first.Wait()
			Equals(t, int32(1), planner.plans.Load())

			time.Sleep(lease + 200*time.Millisecond)
			s.deliver(t)
			Equals(t, c.again, s.otherPlanned() == 1)
			s.settled(t)
		})
	}
}

// TestWorker_AReplanForAPullThatLetGoBeforeItStartsPlansNothing: the pull
// is unlocked while its re-plan waits for its command lease; the re-plan's
// last check sees it, plans nothing and acknowledges the notice. (The lock
// went on to pull 99, queued behind: its notice is the one left.)
func TestWorker_AReplanForAPullThatLetGoBeforeItStartsPlansNothing(t *testing.T) {
	s := newReplanScene(t)
	planner := newGatedPlanner()
	planner.before = make(chan struct{})
	close(planner.until)
	w, b := s.worker(t, s.srv.Client(t), planner)
	_, err := w.DeliverDue(context.Background())
	Ok(t, err)
	_, err = b.UnlockByPull(context.Background(), repo, 10)
	Ok(t, err)
	close(planner.before)
	w.Wait()
	Equals(t, int32(0), planner.plans.Load())
	Equals(t, map[int]int{10: 1}, s.github.starting(handedOver))
	notices := claimAllNotices(t, b)
	Equals(t, 1, len(notices))
	Equals(t, 99, notices[0].Entry.Lock.Pull.Num)
}

// TestWorker_StoppingWaitsForAStartedReplanOnly: a worker that stops waits
// for a re-plan that started and records its end, so nobody plans it
// again; a re-plan still waiting for its pull's command lease stops waiting
// and is left to the next claim, which plans it.
func TestWorker_StoppingWaitsForAStartedReplanOnly(t *testing.T) {
	for _, started := range []bool{true, false} {
		t.Run(fmt.Sprintf("started=%v", started), func(t *testing.T) {
			s := newReplanScene(t)
			planner := newGatedPlanner()
			if !started {
				planner.before = make(chan struct{})
			}
			w, _ := s.worker(t, s.srv.Client(t), planner)
			ctx, stop := context.WithCancel(context.Background())
			stopped := make(chan struct{})
			go func() {
				defer close(stopped)
				w.Run(ctx)
			}()
			if started {
				<-planner.started
			} else {
				eventually(t, "the hand-over was commented", func() bool { return s.github.starting(handedOver)[10] == 1 })
			}
			stop()
			if started {
				select {
				case <-stopped:
					t.Fatal("the worker stopped while its re-plan ran")
				case <-time.After(2 * lease):
				}
				close(planner.until)
			}
			<-stopped

			time.Sleep(lease + 200*time.Millisecond)
			s.deliver(t)
			Equals(t, !started, s.otherPlanned() == 1)
			s.settled(t)
		})
	}
}
