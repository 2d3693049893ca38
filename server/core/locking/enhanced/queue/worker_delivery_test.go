package queue_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/queue"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// deliverer is one replica's worker commenting on a GitHub shared with the
// other replicas.
type deliverer struct {
	backend *backends.Redis
	planner *recordingPlanner
	worker  *queue.Worker
}

func newDeliverer(t *testing.T, srv *redistest.Server, github queue.Commenter, lease time.Duration) *deliverer {
	t.Helper()
	b := newBackend(t, srv)
	planner := &recordingPlanner{}
	w := queue.NewWorker(b, queue.NewNotifier(b, github, true, nil), planner, queue.WorkerOptions{AutoPlan: true, Lease: lease})
	t.Cleanup(w.Wait)
	return &deliverer{backend: b, planner: planner, worker: w}
}

func newBackend(t *testing.T, srv *redistest.Server) *backends.Redis {
	t.Helper()
	b, err := backends.NewRedis(srv.Client(t), backends.RedisOptions{})
	Ok(t, err)
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// handOverToPulls hands the locks of dirs, held by pull 1, to pulls 10,
// 11, ... (one each, in the order of dirs), with pull 99 queued behind each
// of them: one notice per dir, all due at once.
func handOverToPulls(t *testing.T, b *backends.Redis, dirs []string) {
	t.Helper()
	for i, dir := range dirs {
		mustLock(t, b, pullLock(dir, 1))
		enqueue(t, b, pullLock(dir, 10+i), enhanced.PriorityNormal)
		enqueue(t, b, pullLock(dir, 99), enhanced.PriorityNormal)
	}
	_, err := b.UnlockByPull(context.Background(), repo, 1)
	Ok(t, err)
}

// slowGitHub is fakeGitHub whose comments take delay to post, and which
// says when the first one starts.
type slowGitHub struct {
	*fakeGitHub
	delay   time.Duration
	started chan struct{}
	once    sync.Once
}

func (s *slowGitHub) CreateComment(logger logging.SimpleLogging, r models.Repo, pull int, body string, command string) error {
	s.once.Do(func() { close(s.started) })
	time.Sleep(s.delay)
	return s.fakeGitHub.CreateComment(logger, r, pull, body, command)
}

// starting counts, per pull, the comments starting with heading, hidden
// or not.
func (f *fakeGitHub) starting(heading string) map[int]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[int]int{}
	for _, c := range f.comments {
		if strings.HasPrefix(c.body, heading) {
			out[c.pull]++
		}
	}
	return out
}

// TestWorker_ABatchOutlivingItsLeasePostsEachHandOverOnce: one replica
// claims six hand-overs in one batch, with a lease that outlasts one comment
// call but not six; the tail of its batch runs out, and a second replica
// claims and delivers it. Each hand-over is still commented once and
// re-planned once: a replica comments only while its claim holds the notice.
func TestWorker_ABatchOutlivingItsLeasePostsEachHandOverOnce(t *testing.T) {
	const (
		lease = time.Second
		delay = 300 * time.Millisecond
	)
	srv := redistest.Start(t)
	github := &slowGitHub{fakeGitHub: &fakeGitHub{}, delay: delay, started: make(chan struct{})}
	first, second := newDeliverer(t, srv, github, lease), newDeliverer(t, srv, github, lease)
	dirs := []string{"a", "b", "c", "d", "e", "f"}
	handOverToPulls(t, first.backend, dirs)
	ctx := context.Background()

	firstDone := make(chan struct{})
	go func() {
		defer close(firstDone)
		_, err := first.worker.DeliverDue(ctx)
		Ok(t, err)
	}()
	<-github.started // the first replica has claimed the whole batch
	for done := false; !done; {
		select {
		case <-firstDone:
			done = true
		case <-time.After(50 * time.Millisecond):
		}
		_, err := second.worker.DeliverDue(ctx)
		Ok(t, err)
	}
	// Whatever the first replica left, claimed, is the second's once the
	// lease ends.
	time.Sleep(lease + 200*time.Millisecond)
	_, err := second.worker.DeliverDue(ctx)
	Ok(t, err)
	first.worker.Wait()
	second.worker.Wait()

	want := map[int]int{}
	for i := range dirs {
		want[10+i] = 1
	}
	Equals(t, want, github.starting(handedOver))
	planned := map[int]int{}
	for _, p := range append(first.planner.planned(), second.planner.planned()...) {
		planned[p.Pull.Num]++
	}
	Equals(t, want, planned)
	Equals(t, 0, len(claimAllNotices(t, first.backend)))
}

// claimAllNotices claims every notice due now.
func claimAllNotices(t *testing.T, b enhanced.QueueBackend) []enhanced.QueueNotice {
	t.Helper()
	notices, err := b.ClaimNotices(context.Background(), time.Minute, 1000)
	Ok(t, err)
	return notices
}

// TestWorker_HandOversDoNotWaitForPositionComments: six locks are handed
// over at once, with pull 99 queued behind each, and posting position
// comments hangs. Every hand-over is still commented and re-planned; once
// positions post again, pull 99 is told its places once, not once per
// hand-over, and they are its places after all six.
func TestWorker_HandOversDoNotWaitForPositionComments(t *testing.T) {
	srv := redistest.Start(t)
	github := &fakeGitHub{}
	r := newDeliverer(t, srv, github, time.Minute)
	dirs := []string{"a", "b", "c", "d", "e", "f"}
	handOverToPulls(t, r.backend, dirs)
	release := make(chan struct{})
	github.beforeHide = func() { <-release }

	delivered := make(chan struct{})
	go func() {
		defer close(delivered)
		_, err := r.worker.DeliverDue(context.Background())
		Ok(t, err)
	}()
	released := false
	defer func() {
		if !released {
			close(release)
		}
		<-delivered
	}()
	eventually(t, "every hand-over was commented and re-planned while position comments hang", func() bool {
		return len(github.starting(handedOver)) == len(dirs) && len(r.planner.planned()) == len(dirs)
	})
	<-delivered
	close(release)
	released = true
	r.worker.Wait()

	var told []string
	for _, body := range github.visible(99) {
		if strings.HasPrefix(body, positions) {
			told = append(told, body)
		}
	}
	Equals(t, 1, len(told))
	for _, dir := range dirs {
		Assert(t, strings.Contains(told[0], fmt.Sprintf("| `%s` (workspace `default`) | 1 of 1 |", dir)),
			"pull 99 is not shown first in line for %s:\n%s", dir, told[0])
	}
	Equals(t, 1, github.starting(positions)[99])
}

// lateRenewal is a backend whose first notice renewal answers only after
// meanwhile runs: a reply delayed past the lease, as a replica frozen (or
// cut off) right after sending it sees.
type lateRenewal struct {
	*backends.Redis
	once      sync.Once
	meanwhile func()
}

func (l *lateRenewal) RenewNotice(ctx context.Context, n enhanced.QueueNotice, lease time.Duration) error {
	err := l.Redis.RenewNotice(ctx, n, lease)
	l.once.Do(l.meanwhile)
	return err
}

// TestWorker_ARenewalAnsweredAfterItsLeasePostsNothing: a replica renews
// its claim before commenting, and the answer comes back after the lease it
// asked for ended, when another replica has claimed and delivered the
// hand-over. The late replica posts nothing: the lease is read on its own
// clock, not only from the renewal's answer.
func TestWorker_ARenewalAnsweredAfterItsLeasePostsNothing(t *testing.T) {
	const lease = 300 * time.Millisecond
	srv := redistest.Start(t)
	github := &fakeGitHub{}
	other := newDeliverer(t, srv, github, lease)
	late := &lateRenewal{Redis: newBackend(t, srv)}
	planner := &recordingPlanner{}
	w := queue.NewWorker(late, queue.NewNotifier(late, github, true, nil), planner, queue.WorkerOptions{AutoPlan: true, Lease: lease})
	t.Cleanup(w.Wait)
	ctx := context.Background()
	late.meanwhile = func() {
		time.Sleep(lease + 200*time.Millisecond)
		n, err := other.worker.DeliverDue(ctx)
		Ok(t, err)
		Equals(t, 1, n)
	}
	handOverToPulls(t, other.backend, []string{"a"})

	n, err := w.DeliverDue(ctx)
	Ok(t, err)
	Equals(t, 0, n)
	w.Wait()
	other.worker.Wait()
	Equals(t, map[int]int{10: 1}, github.starting(handedOver))
	Equals(t, 0, len(planner.planned()))
	Equals(t, 1, len(other.planner.planned()))
}
