package queue_test

import (
	"context"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/petergtz/pegomock/v4"
	"github.com/runatlantis/atlantis/server/events/models"
	vcsmocks "github.com/runatlantis/atlantis/server/events/vcs/mocks"
	"github.com/runatlantis/atlantis/server/logging"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/events"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/events/eventstest"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/queue"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

const repo = "org/repo"

// replica is one Atlantis replica's queue parts on a shared Redis: its own
// backend, VCS client and worker.
type replica struct {
	backend *backends.Redis
	vcs     *vcsmocks.MockClient
	planner *recordingPlanner
	worker  *queue.Worker
	events  *eventstest.Collector
}

func newReplica(t *testing.T, srv *redistest.Server, autoPlan bool, lease time.Duration) *replica {
	t.Helper()
	b := newBackend(t, srv)
	vcs := vcsmocks.NewMockClient(pegomock.WithT(t))
	planner := &recordingPlanner{}
	notifier := queue.NewNotifier(b, vcs, autoPlan, nil)
	evs := &eventstest.Collector{}
	w := queue.NewWorker(b, notifier, planner, queue.WorkerOptions{AutoPlan: autoPlan, Lease: lease, Events: evs})
	t.Cleanup(w.Wait)
	return &replica{backend: b, vcs: vcs, planner: planner, worker: w, events: evs}
}

// ofType returns the events of type typ that the replicas published.
func ofType(typ events.EventType, replicas ...*replica) []events.Event {
	var out []events.Event
	for _, r := range replicas {
		out = append(out, r.events.OfType(typ)...)
	}
	return out
}

// recordingPlanner stands for the server's planner: it records what it
// planned, once the worker's last check passed.
type recordingPlanner struct {
	mu    sync.Mutex
	plans []models.ProjectLock
}

func (p *recordingPlanner) Replan(_ context.Context, lock models.ProjectLock, start func() error) error {
	if err := start(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.plans = append(p.plans, lock)
	return nil
}

func (p *recordingPlanner) planned() []models.ProjectLock {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]models.ProjectLock(nil), p.plans...)
}

// comment is one CreateComment call.
type comment struct {
	pull int
	body string
}

func commentsOf(vcs *vcsmocks.MockClient) []comment {
	_, _, pulls, bodies, _ := vcs.VerifyWasCalled(pegomock.AtLeast(0)).CreateComment(
		pegomock.Any[logging.SimpleLogging](), pegomock.Any[models.Repo](), pegomock.Any[int](), pegomock.Any[string](), pegomock.Any[string]()).
		GetAllCapturedArguments()
	out := make([]comment, len(pulls))
	for i := range pulls {
		out[i] = comment{pulls[i], bodies[i]}
	}
	return out
}

// withPrefix keeps the comments starting with prefix, from every replica.
func withPrefix(prefix string, replicas ...*replica) []comment {
	var out []comment
	for _, r := range replicas {
		for _, c := range commentsOf(r.vcs) {
			if strings.HasPrefix(c.body, prefix) {
				out = append(out, c)
			}
		}
	}
	return out
}

func pullLock(path string, pull int) models.ProjectLock {
	lock := enhancedtest.NewLock(repo, path, "default", "", pull)
	lock.Pull.BaseRepo = models.Repo{FullName: repo, Owner: "org", Name: "repo"}
	return lock
}

func mustLock(t *testing.T, b enhanced.Backend, lock models.ProjectLock) {
	t.Helper()
	acquired, _, err := b.TryLock(context.Background(), enhanced.LockRequest{Lock: lock})
	Ok(t, err)
	Assert(t, acquired, "lock not taken")
}

func enqueue(t *testing.T, b enhanced.QueueBackend, lock models.ProjectLock, p enhanced.Priority) enhanced.EnqueueResult {
	t.Helper()
	res, err := b.Enqueue(context.Background(), enhancedtest.QueueRequest(lock, p, time.Hour))
	Ok(t, err)
	Assert(t, res.Queued, "not queued")
	return res
}

const (
	handedOver = "**Lock handed over**"
	positions  = "**Lock queue position**"
	expired    = "**Lock queue entry expired**"
)

// TestWorker_OneHandOverOneCommentOneReplanAcrossReplicas: two replicas'
// workers deliver at the same moment; the hand-over is commented and
// re-planned exactly once between them, and the pull still in the queue
// hears its new place.
func TestWorker_OneHandOverOneCommentOneReplanAcrossReplicas(t *testing.T) {
	srv := redistest.Start(t)
	r1, r2 := newReplica(t, srv, true, time.Minute), newReplica(t, srv, true, time.Minute)
	ctx := context.Background()
	for round := 0; round < 10; round++ {
		path := "dir" + string(rune('a'+round))
		mustLock(t, r1.backend, pullLock(path, 1))
		enqueue(t, r1.backend, pullLock(path, 2), enhanced.PriorityNormal)
		enqueue(t, r2.backend, pullLock(path, 3), enhanced.PriorityNormal)
		_, err := r2.backend.UnlockByPull(ctx, repo, 1)
		Ok(t, err)

		var wg sync.WaitGroup
		for _, r := range []*replica{r1, r2} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := r.worker.DeliverDue(ctx)
				Ok(t, err)
			}()
		}
		wg.Wait()
		r1.worker.Wait()
		r2.worker.Wait()
		Equals(t, round+1, len(withPrefix(handedOver, r1, r2)))
		Equals(t, round+1, len(r1.planner.planned())+len(r2.planner.planned()))
		// One event of each per hand-over, from whichever replica delivered it.
		Equals(t, round+1, len(ofType(events.EventLockTransferred, r1, r2)))
		Equals(t, round+1, len(ofType(events.EventReplanStarted, r1, r2)))
	}
	for _, e := range ofType(events.EventLockTransferred, r1, r2) {
		Equals(t, 2, e.Lock.Pull.Num)
	}
	Equals(t, 0, len(ofType(events.EventReplanFailed, r1, r2)))
	for _, c := range withPrefix(handedOver, r1, r2) {
		Equals(t, 2, c.pull)
		Assert(t, strings.Contains(c.body, "atlantis plan -d "), "hand-over comment does not say what runs: %s", c.body)
	}
	for _, p := range append(r1.planner.planned(), r2.planner.planned()...) {
		Equals(t, 2, p.Pull.Num)
	}
	// Pull 3 moved to the head of each queue and was told so, each time.
	var told int
	for _, c := range withPrefix(positions, r1, r2) {
		if c.pull == 3 {
			told++
			Assert(t, strings.Contains(c.body, "| 1 of 1 |"), "pull 3's new position not shown: %s", c.body)
		}
	}
	Assert(t, told >= 10, "pull 3 was told its new place %d times in 10 rounds", told)
}

// TestWorker_TakesOverANoticeWhoseReplicaDied: a replica claims the notice,
// comments, and dies before re-planning; once its lease ends another
// replica re-plans, without commenting again.
func TestWorker_TakesOverANoticeWhoseReplicaDied(t *testing.T) {
	srv := redistest.Start(t)
	const lease = 300 * time.Millisecond
	dead, alive := newReplica(t, srv, true, lease), newReplica(t, srv, true, lease)
	ctx := context.Background()
	mustLock(t, dead.backend, pullLock("dir", 1))
	enqueue(t, dead.backend, pullLock("dir", 2), enhanced.PriorityNormal)
	_, err := dead.backend.Unlock(ctx, pullLock("dir", 1).Project, "default")
	Ok(t, err)

	// What the dead replica did before it died: claimed and commented.
	claimed, err := dead.backend.ClaimNotices(ctx, lease, 10)
	Ok(t, err)
	Equals(t, 1, len(claimed))
	Ok(t, dead.backend.MarkNotice(ctx, claimed[0], enhanced.StepCommented, lease))

	n, err := alive.worker.DeliverDue(ctx)
	Ok(t, err)
	Equals(t, 0, n) // still leased to the dead replica
	time.Sleep(lease + 200*time.Millisecond)
	n, err = alive.worker.DeliverDue(ctx)
	Ok(t, err)
	Equals(t, 1, n)
	alive.worker.Wait()
	Equals(t, 0, len(withPrefix(handedOver, alive)))
	Equals(t, 1, len(alive.planner.planned()))

	// Delivered: nobody gets it again.
	time.Sleep(lease + 200*time.Millisecond)
	n, err = alive.worker.DeliverDue(ctx)
	Ok(t, err)
	Equals(t, 0, n)
}

// TestWorker_AnnouncesNothingToAPullThatLetGo: a pull handed a lock and
// closed before the notice was delivered gets no comment and no plan.
func TestWorker_AnnouncesNothingToAPullThatLetGo(t *testing.T) {
	srv := redistest.Start(t)
	r := newReplica(t, srv, true, time.Minute)
	ctx := context.Background()
	mustLock(t, r.backend, pullLock("dir", 1))
	enqueue(t, r.backend, pullLock("dir", 2), enhanced.PriorityNormal)
	_, err := r.backend.UnlockByPull(ctx, repo, 1)
	Ok(t, err)
	_, err = r.backend.UnlockByPull(ctx, repo, 2)
	Ok(t, err)
	n, err := r.worker.DeliverDue(ctx)
	Ok(t, err)
	Equals(t, 1, n) // handled by dropping it
	r.worker.Wait()
	Equals(t, 0, len(withPrefix(handedOver, r)))
	Equals(t, 0, len(r.planner.planned()))
	notices, err := r.backend.ClaimNotices(ctx, time.Minute, 10)
	Ok(t, err)
	Equals(t, 0, len(notices))
}

// TestWorker_WithoutAutoPlanOnlyComments: the comment tells the author what
// to run, and nothing is planned.
func TestWorker_WithoutAutoPlanOnlyComments(t *testing.T) {
	srv := redistest.Start(t)
	r := newReplica(t, srv, false, time.Minute)
	ctx := context.Background()
	named := pullLock("dir", 2)
	named.Project.ProjectName = "network"
	holder := pullLock("dir", 1)
	holder.Project.ProjectName = "network"
	mustLock(t, r.backend, holder)
	enqueue(t, r.backend, named, enhanced.PriorityNormal)
	_, err := r.backend.UnlockIfOwnedByPull(ctx, holder.Project, "default", 1)
	Ok(t, err)
	_, err = r.worker.DeliverDue(ctx)
	Ok(t, err)
	r.worker.Wait()
	comments := withPrefix(handedOver, r)
	Equals(t, 1, len(comments))
	Assert(t, strings.Contains(comments[0].body, "Comment `atlantis plan -p network`"), "comment does not say what to run: %s", comments[0].body)
	Equals(t, 0, len(r.planner.planned()))
}

// TestWorker_ExpiryIsCommented: a sweep expires an entry and its pull hears
// that it left the queue and how to join again.
func TestWorker_ExpiryIsCommented(t *testing.T) {
	srv := redistest.Start(t)
	r := newReplica(t, srv, true, time.Minute)
	ctx := context.Background()
	mustLock(t, r.backend, pullLock("dir", 1))
	_, err := r.backend.Enqueue(ctx, enhancedtest.QueueRequest(pullLock("dir", 2), enhanced.PriorityNormal, 100*time.Millisecond))
	Ok(t, err)
	time.Sleep(300 * time.Millisecond)
	Equals(t, 1, r.worker.Sweep(ctx).Expired)
	_, err = r.worker.DeliverDue(ctx)
	Ok(t, err)
	comments := withPrefix(expired, r)
	Equals(t, 1, len(comments))
	Equals(t, 2, comments[0].pull)
	Assert(t, strings.Contains(comments[0].body, "still locked by [#1](") && strings.Contains(comments[0].body, "atlantis plan -d dir -w default"),
		"expiry comment misses the holder or the command: %s", comments[0].body)
	Equals(t, 0, len(r.planner.planned()))
	expiries := ofType(events.EventQueueEntryExpired, r)
	Equals(t, 1, len(expiries))
	Equals(t, 2, expiries[0].Lock.Pull.Num)
	Equals(t, 1, expiries[0].Current.Pull.Num)
	Equals(t, 0, len(ofType(events.EventLockTransferred, r)))
}

// TestPolicy_QueuesOnlyPlansAndCommentsOncePerCommand: only a running plan's
// refused requests queue; when the plan ends, its pull gets one comment for
// every project it queued for, replacing the previous one.
func TestPolicy_QueuesOnlyPlansAndCommentsOncePerCommand(t *testing.T) {
	srv := redistest.Start(t)
	r := newReplica(t, srv, true, time.Minute)
	rules, err := queue.ParseRules([]byte("rules:\n  - dir: prod\n    priority: high\n"), "rules.yaml")
	Ok(t, err)
	policy := queue.NewPolicy(rules, time.Hour, queue.NewNotifier(r.backend, r.vcs, true, nil))
	queued := 0
	policy.OnQueued(func() { queued++ })
	baseRepo := pullLock("dir", 2).Pull.BaseRepo

	Assert(t, !policy.ShouldQueue(pullLock("prod", 2)), "queued with no command running")
	apply := policy.Track(baseRepo, 2, false)
	Assert(t, !policy.ShouldQueue(pullLock("prod", 2)), "an apply's request queued")
	plan := policy.Track(baseRepo, 2, true)
	Assert(t, policy.ShouldQueue(pullLock("prod", 2)), "a plan's request did not queue")
	Assert(t, !policy.ShouldQueue(pullLock("prod", 3)), "another pull's request queued")
	prio, headstart := policy.Classify(pullLock("prod", 2))
	Equals(t, enhanced.PriorityHigh, prio)
	Equals(t, rules.AgingStep(), headstart)

	for _, path := range []string{"prod", "dir"} {
		mustLock(t, r.backend, pullLock(path, 1))
		policy.Queued(enqueue(t, r.backend, pullLock(path, 2), enhanced.PriorityNormal))
	}
	Equals(t, 2, queued) // the deadlock detector heard of each
	plan()
	policy.Wait()
	Equals(t, 0, len(withPrefix(positions, r))) // the apply still runs
	apply()
	apply() // a second call changes nothing
	policy.Wait()
	comments := withPrefix(positions, r)
	Equals(t, 1, len(comments))
	body := comments[0].body
	Assert(t, strings.Contains(body, "waits for 2 locked projects") && strings.Contains(body, "`prod`") && strings.Contains(body, "`dir`"),
		"position comment does not list both projects: %s", body)
	Assert(t, strings.Contains(body, "When [#1](") && strings.Contains(body, "is merged, closed or unlocked"), "position comment does not say what happens next: %s", body)
	r.vcs.VerifyWasCalledOnce().HidePrevCommandComments(pegomock.Any[logging.SimpleLogging](), pegomock.Eq(baseRepo), pegomock.Eq(2),
		pegomock.Eq("lock queue position"), pegomock.Eq(""))
	Assert(t, !policy.ShouldQueue(pullLock("prod", 2)), "still queueing after the commands ended")
}

// TestWorker_LeavesAHandOverToThePlanThatWaitedForIt: a pull queued earlier
// plans again with a bounded wait, and the release serves that wait: its own
// plan runs on, so the worker neither comments nor re-plans.
func TestWorker_LeavesAHandOverToThePlanThatWaitedForIt(t *testing.T) {
	srv := redistest.Start(t)
	r := newReplica(t, srv, true, time.Minute)
	ctx := context.Background()
	mustLock(t, r.backend, pullLock("dir", 1))
	enqueue(t, r.backend, pullLock("dir", 2), enhanced.PriorityNormal)
	waited := make(chan bool, 1)
	go func() {
		acquired, _, err := r.backend.TryLockWithTimeout(ctx, enhanced.LockRequest{Lock: pullLock("dir", 2)}, 10*time.Second)
		waited <- err == nil && acquired
	}()
	enhancedtest.AwaitQueue(t, r.backend, pullLock("dir", 2), 2)
	_, err := r.backend.UnlockByPull(ctx, repo, 1)
	Ok(t, err)
	Assert(t, <-waited, "the bounded wait did not get the lock")
	n, err := r.worker.DeliverDue(ctx)
	Ok(t, err)
	Equals(t, 1, n)
	r.worker.Wait()
	Equals(t, 0, len(withPrefix(handedOver, r)))
	Equals(t, 0, len(r.planner.planned()))
}

var dirPlace = regexp.MustCompile("\\| `dir` \\(workspace `default`\\) \\| (\\d+ of \\d+) \\|")

// TestPolicy_TellsThePullsACriticalEntryWentAheadOf: every queued pull was
// told its place when it queued; a critical entry that sorts ahead of it
// moves it back, so it is told its new place. An entry that joins at the end
// moves nobody, and nobody else hears of it.
func TestPolicy_TellsThePullsACriticalEntryWentAheadOf(t *testing.T) {
	srv := redistest.Start(t)
	r := newReplica(t, srv, true, time.Minute)
	policy := queue.NewPolicy(queue.DefaultRules(), time.Hour, queue.NewNotifier(r.backend, r.vcs, true, nil))
	baseRepo := pullLock("dir", 2).Pull.BaseRepo
	mustLock(t, r.backend, pullLock("dir", 1))
	queueFor := func(pull int, p enhanced.Priority) {
		done := policy.Track(baseRepo, pull, true)
		policy.Queued(enqueue(t, r.backend, pullLock("dir", pull), p))
		done()
		policy.Wait()
	}
	// placesOf is the place each position comment of pull gave it in the
	// queue of dir.
	placesOf := func(pull int) []string {
		var places []string
		for _, c := range withPrefix(positions, r) {
			if m := dirPlace.FindStringSubmatch(c.body); c.pull == pull && m != nil {
				places = append(places, m[1])
			}
		}
		return places
	}

	queueFor(2, enhanced.PriorityNormal)
	queueFor(3, enhanced.PriorityNormal)
	Equals(t, []string{"1 of 1"}, placesOf(2))
	Equals(t, []string{"2 of 2"}, placesOf(3))

	queueFor(4, enhanced.PriorityCritical)
	Equals(t, []string{"1 of 3"}, placesOf(4))
	Equals(t, []string{"1 of 1", "2 of 3"}, placesOf(2))
	Equals(t, []string{"2 of 2", "3 of 3"}, placesOf(3))
}

// TestPolicy_PullsBehindALeavingPullHearTheirNewPlaces: pull 2, first in
// line, leaves its queues (unlocked or closed); pull 3 behind it is told it
// is first now, and pull 2's position comment is hidden, with no new one.
func TestPolicy_PullsBehindALeavingPullHearTheirNewPlaces(t *testing.T) {
	srv := redistest.Start(t)
	r := newReplica(t, srv, true, time.Minute)
	policy := queue.NewPolicy(queue.DefaultRules(), time.Hour, queue.NewNotifier(r.backend, r.vcs, true, nil))
	ctx := context.Background()
	mustLock(t, r.backend, pullLock("dir", 1))
	enqueue(t, r.backend, pullLock("dir", 2), enhanced.PriorityNormal)
	enqueue(t, r.backend, pullLock("dir", 3), enhanced.PriorityNormal)

	left, err := r.backend.LeaveQueues(ctx, repo, 2)
	Ok(t, err)
	policy.Left(left)
	policy.Wait()
	comments := withPrefix(positions, r)
	Equals(t, 1, len(comments))
	Equals(t, 3, comments[0].pull)
	Assert(t, strings.Contains(comments[0].body, "| 1 of 1 |"), "pull 3's new position not shown: %s", comments[0].body)
	baseRepo := pullLock("dir", 2).Pull.BaseRepo
	for _, pull := range []int{2, 3} {
		r.vcs.VerifyWasCalledOnce().HidePrevCommandComments(pegomock.Any[logging.SimpleLogging](), pegomock.Eq(baseRepo), pegomock.Eq(pull),
			pegomock.Eq("lock queue position"), pegomock.Eq(""))
	}

	// A pull that was in no queue moves nobody.
	policy.Left(nil)
	policy.Wait()
	Equals(t, 1, len(withPrefix(positions, r)))
}
