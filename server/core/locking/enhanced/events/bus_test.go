package events_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"
	tally "github.com/uber-go/tally/v4"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/events"
)

// numbered is event n of publisher p, told apart by its lock's pull number
// and repository.
func numbered(p, n int) events.Event {
	return events.Event{Type: events.EventLockAcquired, Lock: &models.ProjectLock{
		Pull: models.PullRequest{Num: n, BaseRepo: models.Repo{FullName: fmt.Sprintf("publisher/%d", p)}},
	}}
}

// recorder collects what a subscriber was handed.
type recorder struct {
	mu  sync.Mutex
	got []int
}

func (r *recorder) handle(e events.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, e.Lock.Pull.Num)
}

func (r *recorder) seen() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]int(nil), r.got...)
}

func seq(from, to int) []int {
	var out []int
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}

func drops(scope tally.TestScope, subscriber string) int64 {
	c, ok := scope.Snapshot().Counters()[events.MetricDrops+"+subscriber="+subscriber]
	if !ok {
		return -1
	}
	return c.Value()
}

// A subscriber stuck in its handler fills its buffer; the events after that
// are dropped for it alone and counted, the publisher goes on at once (were
// it to wait, this test would never end), and another subscriber still gets
// every event in order.
func TestBus_BlockedSubscriberDropsAndCounts(t *testing.T) {
	scope := tally.NewTestScope("", nil)
	bus := events.NewBus(scope)
	const buffer, published = 4, 20

	entered := make(chan struct{})
	release := make(chan struct{})
	var slow recorder
	slowSub := bus.Subscribe("slow", buffer, func(e events.Event) {
		if e.Lock.Pull.Num == 1 {
			close(entered)
			<-release
		}
		slow.handle(e)
	})
	var fast recorder
	fastSub := bus.Subscribe("fast", published, fast.handle)
	Equals(t, int64(0), drops(scope, "slow"))

	bus.Publish(numbered(0, 1))
	<-entered // the slow handler holds event 1: its buffer is empty
	for n := 2; n <= published; n++ {
		bus.Publish(numbered(0, n))
	}
	Equals(t, uint64(published-1-buffer), slowSub.Dropped())
	Equals(t, int64(published-1-buffer), drops(scope, "slow"))

	close(release)
	bus.Close()
	Equals(t, seq(1, 1+buffer), slow.seen())
	Equals(t, seq(1, published), fast.seen())
	Equals(t, uint64(0), fastSub.Dropped())
	Equals(t, int64(0), drops(scope, "fast"))
}

// Publishers on many goroutines: each subscriber gets every event, and each
// publisher's events in the order it published them.
func TestBus_ConcurrentPublishersKeepEachOneOrder(t *testing.T) {
	bus := events.NewBus(nil)
	const publishers, each = 8, 500
	type sub struct {
		mu     sync.Mutex
		byPubl map[string][]int
	}
	subs := make([]*sub, 3)
	for i := range subs {
		s := &sub{byPubl: map[string][]int{}}
		subs[i] = s
		bus.Subscribe(fmt.Sprintf("sub%d", i), publishers*each, func(e events.Event) {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.byPubl[e.Lock.Pull.BaseRepo.FullName] = append(s.byPubl[e.Lock.Pull.BaseRepo.FullName], e.Lock.Pull.Num)
		})
	}
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			for n := 1; n <= each; n++ {
				bus.Publish(numbered(p, n))
			}
		})
	}
	wg.Wait()
	bus.Close()
	for i, s := range subs {
		Equals(t, publishers, len(s.byPubl))
		for p, got := range s.byPubl {
			Assert(t, len(got) == each, "subscriber %d got %d events of %s, want %d", i, len(got), p, each)
			Equals(t, seq(1, each), got)
		}
	}
}

// Closing a subscription hands it what its buffer holds, then nothing more;
// the other subscribers carry on.
func TestSubscription_CloseStopsDelivery(t *testing.T) {
	bus := events.NewBus(nil)
	defer bus.Close()
	var leaving, staying recorder
	leavingSub := bus.Subscribe("leaving", 10, leaving.handle)
	bus.Subscribe("staying", 10, staying.handle)
	for n := 1; n <= 3; n++ {
		bus.Publish(numbered(0, n))
	}
	leavingSub.Close()
	Equals(t, seq(1, 3), leaving.seen())
	leavingSub.Close() // a second Close returns at once
	for n := 4; n <= 5; n++ {
		bus.Publish(numbered(0, n))
	}
	bus.Close()
	Equals(t, seq(1, 3), leaving.seen())
	Equals(t, seq(1, 5), staying.seen())
	Equals(t, uint64(0), leavingSub.Dropped())
}

// After Close the bus takes no subscriber and publishes to nobody, and
// closing a subscription of the closed bus returns.
func TestBus_Closed(t *testing.T) {
	bus := events.NewBus(nil)
	var before recorder
	beforeSub := bus.Subscribe("before", 10, before.handle)
	bus.Publish(numbered(0, 1))
	bus.Close()
	Equals(t, []int{1}, before.seen())
	beforeSub.Close()

	var after recorder
	afterSub := bus.Subscribe("after", 10, after.handle)
	bus.Publish(numbered(0, 2))
	afterSub.Close()
	bus.Close()
	Equals(t, []int(nil), after.seen())
	Equals(t, []int{1}, before.seen())
}

// Subscribing and unsubscribing while others publish is safe (run with
// -race) and loses no event of a subscriber that stays.
func TestBus_SubscribeWhilePublishing(t *testing.T) {
	bus := events.NewBus(nil)
	const published = 2000
	var steady recorder
	bus.Subscribe("steady", published, steady.handle)
	var wg sync.WaitGroup
	wg.Go(func() {
		for n := 1; n <= published; n++ {
			bus.Publish(numbered(0, n))
		}
	})
	wg.Go(func() {
		for i := range 200 {
			var r recorder
			s := bus.Subscribe(fmt.Sprintf("churn%d", i%3), 8, r.handle)
			s.Close()
			got := r.seen()
			for j := 1; j < len(got); j++ {
				Assert(t, got[j] > got[j-1], "churn subscriber got %v out of order", got)
			}
		}
	})
	wg.Wait()
	bus.Close()
	Equals(t, seq(1, published), steady.seen())
}
