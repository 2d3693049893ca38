package enhancedtest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// QueueingBackend is a backend with durable queues.
type QueueingBackend interface {
	enhanced.Backend
	enhanced.QueueBackend
}

// QueueOptions tells the queue suite how to reach outside the backend.
type QueueOptions struct {
	// DeleteOutside deletes a lock behind the backend's back, as an upstream
	// replica or an operator would; nil skips the cases that need it.
	DeleteOutside func(t *testing.T, lock models.ProjectLock)
	// Reopen returns a new backend on the same storage, as after a restart;
	// nil skips the cases that need it.
	Reopen func(t *testing.T, old QueueingBackend) QueueingBackend
}

// queueTimeout is long beside any case: entries expire only where a case
// says so.
const queueTimeout = time.Hour

// QueueRequest queues lock at priority p with the suite's aging step.
func QueueRequest(lock models.ProjectLock, p enhanced.Priority, timeout time.Duration) enhanced.QueueRequest {
	return enhanced.QueueRequest{Lock: lock, Priority: p, Headstart: p.Headstart(TestAgingStep), Timeout: timeout}
}

type queueCase struct {
	name string
	// needs says what QueueOptions the case uses.
	needsDelete, needsReopen bool
	run                      func(t *testing.T, ctx context.Context, b QueueingBackend, opts QueueOptions)
}

// RunQueueConformance runs the durable queue contract (enhanced.QueueBackend)
// against fresh, empty backends from newBackend.
func RunQueueConformance(t *testing.T, newBackend func(t *testing.T) QueueingBackend, opts QueueOptions) {
	for _, c := range queueCases() {
		t.Run(c.name, func(t *testing.T) {
			if c.needsDelete && opts.DeleteOutside == nil || c.needsReopen && opts.Reopen == nil {
				t.Skip("the backend under test cannot do what this case needs")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			c.run(t, ctx, newBackend(t), opts)
		})
	}
}

func mustEnqueue(t testing.TB, ctx context.Context, b enhanced.QueueBackend, req enhanced.QueueRequest) enhanced.EnqueueResult {
	t.Helper()
	res, err := b.Enqueue(ctx, req)
	Ok(t, err)
	Assert(t, res.Queued, "pull %d not queued for %s", req.Lock.Pull.Num, models.GenerateLockKey(req.Lock.Project, req.Lock.Workspace))
	return res
}

// queuedPulls returns the pulls of a lock's durable entries, head first, and
// checks their positions count up from 1.
func queuedPulls(t testing.TB, ctx context.Context, b enhanced.QueueBackend, lock models.ProjectLock) []int {
	t.Helper()
	q, err := b.Queue(ctx, lock.Project, lock.Workspace)
	Ok(t, err)
	var pulls []int
	for i, e := range q.Entries {
		Equals(t, i+1, e.Position)
		if !e.Synchronous {
			pulls = append(pulls, e.Lock.Pull.Num)
		}
	}
	return pulls
}

// claimAll claims every due notice with a short lease.
func claimAll(t testing.TB, ctx context.Context, b enhanced.QueueBackend) []enhanced.QueueNotice {
	t.Helper()
	n, err := b.ClaimNotices(ctx, time.Minute, 1000)
	Ok(t, err)
	return n
}

// claimHandOver hands a lock over and claims the one notice it leaves.
func claimHandOver(t testing.TB, ctx context.Context, b QueueingBackend, lease time.Duration) enhanced.QueueNotice {
	t.Helper()
	holder := NewLock(repo, "dir", "default", "", 1)
	mustLock(t, ctx, b, holder)
	mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", 2), enhanced.PriorityNormal, queueTimeout))
	_, err := b.Unlock(ctx, holder.Project, holder.Workspace)
	Ok(t, err)
	claimed, err := b.ClaimNotices(ctx, lease, 10)
	Ok(t, err)
	Equals(t, 1, len(claimed))
	return claimed[0]
}

func ackAll(t testing.TB, ctx context.Context, b enhanced.QueueBackend, notices []enhanced.QueueNotice) {
	t.Helper()
	for _, n := range notices {
		Ok(t, b.AckNotice(ctx, n))
	}
}

func holderPull(t testing.TB, ctx context.Context, b enhanced.Backend, lock models.ProjectLock) int {
	t.Helper()
	got, err := b.GetLock(ctx, lock.Project, lock.Workspace)
	Ok(t, err)
	if got == nil {
		return 0
	}
	return got.Pull.Num
}

func queueCases() []queueCase {
	releases := releasePaths()
	var cases []queueCase
	for _, rel := range releases {
		cases = append(cases, queueCase{
			name: "the head is handed the lock on " + rel.how + ", with one notice",
			run: func(t *testing.T, ctx context.Context, b QueueingBackend, _ QueueOptions) {
				holder := NewLock(repo, "dir", "default", "", 1)
				mustLock(t, ctx, b, holder)
				first := mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", 2), enhanced.PriorityNormal, queueTimeout))
				mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", 3), enhanced.PriorityNormal, queueTimeout))
				Equals(t, 0, len(claimAll(t, ctx, b)))

				Ok(t, rel.release(ctx, b, holder))
				Equals(t, 2, holderPull(t, ctx, b, holder))
				Equals(t, []int{3}, queuedPulls(t, ctx, b, holder))
				// With no plan of pull 2 waiting, the lock is the entry's,
				// which tells the queue worker to announce it and re-plan.
				q, err := b.Queue(ctx, holder.Project, holder.Workspace)
				Ok(t, err)
				Equals(t, first.Entry.ID, q.HolderID)
				notices := claimAll(t, ctx, b)
				Equals(t, 1, len(notices))
				n := notices[0]
				Equals(t, enhanced.NoticeTransferred, n.Kind)
				Equals(t, first.Entry.ID, n.Entry.ID)
				Equals(t, 2, n.Entry.Lock.Pull.Num)
				Equals(t, "dir", n.Entry.Lock.Project.Path)
				Assert(t, !n.At.Before(first.Entry.Enqueued), "transfer at %s before the entry joined at %s", n.At, first.Entry.Enqueued)
				Ok(t, b.AckNotice(ctx, n))
				Equals(t, 0, len(claimAll(t, ctx, b)))

				// The new holder's pull releases it in turn, to the next.
				_, err = b.UnlockIfOwnedByPull(ctx, holder.Project, holder.Workspace, 2)
				Ok(t, err)
				Equals(t, 3, holderPull(t, ctx, b, holder))
				ackAll(t, ctx, b, claimAll(t, ctx, b))
				_, err = b.UnlockIfOwnedByPull(ctx, holder.Project, holder.Workspace, 3)
				Ok(t, err)
				Equals(t, 0, holderPull(t, ctx, b, holder))
				Equals(t, 0, len(claimAll(t, ctx, b)))
			},
		})
	}
	cases = append(cases, jointCases()...)
	return append(cases, []queueCase{
		{
			name: "a free lock or the pull's own lock is not queued for",
			run: func(t *testing.T, ctx context.Context, b QueueingBackend, _ QueueOptions) {
				lock := NewLock(repo, "dir", "default", "", 1)
				res, err := b.Enqueue(ctx, QueueRequest(lock, enhanced.PriorityNormal, queueTimeout))
				Ok(t, err)
				Assert(t, !res.Queued, "queued for a free lock")
				mustLock(t, ctx, b, lock)
				res, err = b.Enqueue(ctx, QueueRequest(lock, enhanced.PriorityNormal, queueTimeout))
				Ok(t, err)
				Assert(t, !res.Queued, "queued for its own lock")
				Equals(t, 1, res.Holder.Pull.Num)
				Equals(t, []int(nil), queuedPulls(t, ctx, b, lock))
			},
		},
		{
			name: "enqueue is idempotent: a repeat keeps the entry and its place",
			run: func(t *testing.T, ctx context.Context, b QueueingBackend, _ QueueOptions) {
				holder := NewLock(repo, "dir", "default", "", 1)
				mustLock(t, ctx, b, holder)
				a := mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", 2), enhanced.PriorityNormal, queueTimeout))
				Assert(t, a.Joined, "first enqueue did not join")
				Equals(t, 1, a.Entry.Position)
				Equals(t, 2, a.Entry.Lock.Pull.Num)
				Equals(t, "dir", a.Entry.Lock.Project.Path)
				Equals(t, 1, a.Holder.Pull.Num)
				mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", 3), enhanced.PriorityNormal, queueTimeout))
				// A repeat, even at a higher priority, keeps its place.
				again := mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", 2), enhanced.PriorityCritical, queueTimeout))
				Assert(t, !again.Joined, "repeat joined again")
				Equals(t, a.Entry.ID, again.Entry.ID)
				Equals(t, 1, again.Entry.Position)
				Equals(t, a.Entry.Enqueued.UnixMilli(), again.Entry.Enqueued.UnixMilli())
				three := mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", 3), enhanced.PriorityNormal, queueTimeout))
				Equals(t, 2, three.Entry.Position)
				Equals(t, []int{2, 3}, queuedPulls(t, ctx, b, holder))
			},
		},
		{
			name: "entries are ordered by priority, then arrival",
			run: func(t *testing.T, ctx context.Context, b QueueingBackend, _ QueueOptions) {
				holder := NewLock(repo, "dir", "default", "", 1)
				mustLock(t, ctx, b, holder)
				arrivals := []struct {
					pull     int
					priority enhanced.Priority
				}{
					{10, enhanced.PriorityLow}, {11, enhanced.PriorityNormal}, {12, enhanced.PriorityHigh},
					{13, enhanced.PriorityNormal}, {14, enhanced.PriorityCritical}, {15, enhanced.PriorityHigh},
					{16, enhanced.PriorityCritical}, {17, enhanced.PriorityLow},
				}
				for _, a := range arrivals {
					res := mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", a.pull), a.priority, queueTimeout))
					Equals(t, a.priority, res.Entry.Priority)
				}
				want := []int{14, 16, 12, 15, 11, 13, 10, 17}
				Equals(t, want, queuedPulls(t, ctx, b, holder))
				// Releases serve them in that order.
				prev := 1
				for _, pull := range want {
					_, err := b.UnlockIfOwnedByPull(ctx, holder.Project, holder.Workspace, prev)
					Ok(t, err)
					Equals(t, pull, holderPull(t, ctx, b, holder))
					prev = pull
				}
				Equals(t, len(want), len(claimAll(t, ctx, b)))
			},
		},
		{
			name: "waiting ages priority: a low entry goes before normal ones that arrived an aging step later",
			run: func(t *testing.T, ctx context.Context, b QueueingBackend, _ QueueOptions) {
				const step = 400 * time.Millisecond
				req := func(pull int, p enhanced.Priority) enhanced.QueueRequest {
					return enhanced.QueueRequest{Lock: NewLock(repo, "dir", "default", "", pull), Priority: p, Headstart: p.Headstart(step), Timeout: queueTimeout}
				}
				holder := NewLock(repo, "dir", "default", "", 1)
				mustLock(t, ctx, b, holder)
				mustEnqueue(t, ctx, b, req(2, enhanced.PriorityLow))
				mustEnqueue(t, ctx, b, req(3, enhanced.PriorityNormal)) // within a step: ahead of the low one
				time.Sleep(2*step + 100*time.Millisecond)
				mustEnqueue(t, ctx, b, req(4, enhanced.PriorityNormal)) // more than a step later: behind it
				mustEnqueue(t, ctx, b, req(5, enhanced.PriorityHigh))   // two levels up, two steps later: ahead of it
				mustEnqueue(t, ctx, b, req(6, enhanced.PriorityCritical))
				Equals(t, []int{6, 3, 2, 5, 4}, queuedPulls(t, ctx, b, holder))
			},
		},
		{
			name: "synchronous waiters and durable entries share one order",
			run: func(t *testing.T, ctx context.Context, b QueueingBackend, _ QueueOptions) {
				holder := NewLock(repo, "dir", "default", "", 1)
				mustLock(t, ctx, b, holder)
				mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", 2), enhanced.PriorityNormal, queueTimeout))
				waiter := NewLock(repo, "dir", "default", "", 3)
				result := startWait(ctx, b, Request(waiter), 20*time.Second)
				AwaitQueue(t, b, holder, 2)
				q, err := b.Queue(ctx, holder.Project, holder.Workspace)
				Ok(t, err)
				Equals(t, 2, len(q.Entries))
				Assert(t, !q.Entries[0].Synchronous && q.Entries[1].Synchronous, "want the durable entry first, then the waiter: %+v", q.Entries)
				Equals(t, 3, q.Entries[1].Lock.Pull.Num)

				_, err = b.UnlockIfOwnedByPull(ctx, holder.Project, holder.Workspace, 1)
				Ok(t, err)
				Equals(t, 2, holderPull(t, ctx, b, holder))
				_, err = b.UnlockIfOwnedByPull(ctx, holder.Project, holder.Workspace, 2)
				Ok(t, err)
				r := receive(t, result)
				Ok(t, r.err)
				Assert(t, r.acquired, "waiter behind the durable entry did not get the lock")
				// Only the durable entry leaves a notice.
				Equals(t, 1, len(claimAll(t, ctx, b)))
			},
		},
		{
			name: "a higher-priority synchronous waiter goes ahead of an older durable entry",
			run: func(t *testing.T, ctx context.Context, b QueueingBackend, _ QueueOptions) {
				holder := NewLock(repo, "dir", "default", "", 1)
				mustLock(t, ctx, b, holder)
				mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", 2), enhanced.PriorityNormal, queueTimeout))
				result := startWait(ctx, b, RequestWithPriority(NewLock(repo, "dir", "default", "", 3), enhanced.PriorityHigh), 20*time.Second)
				AwaitQueue(t, b, holder, 2)
				q, err := b.Queue(ctx, holder.Project, holder.Workspace)
				Ok(t, err)
				Equals(t, 2, len(q.Entries))
				Assert(t, q.Entries[0].Synchronous && q.Entries[0].Lock.Pull.Num == 3, "the high waiter is not first: %+v", q.Entries)
				_, err = b.UnlockIfOwnedByPull(ctx, holder.Project, holder.Workspace, 1)
				Ok(t, err)
				r := receive(t, result)
				Ok(t, r.err)
				Assert(t, r.acquired, "the high waiter did not get the lock")
				Equals(t, []int{2}, queuedPulls(t, ctx, b, holder))
				Equals(t, 0, len(claimAll(t, ctx, b)))
			},
		},
		{
			name: "a pull that leaves a queue is never handed the lock",
			run: func(t *testing.T, ctx context.Context, b QueueingBackend, _ QueueOptions) {
				locks := mustHold(t, ctx, b, 1, "dir", "other")
				holder, other := locks[0], locks[1]
				for _, l := range locks {
					mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, l.Project.Path, "default", "", 2), enhanced.PriorityNormal, queueTimeout))
					mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, l.Project.Path, "default", "", 3), enhanced.PriorityNormal, queueTimeout))
				}
				entries, err := b.PullEntries(ctx, repo, 2)
				Ok(t, err)
				Equals(t, 2, len(entries))
				for _, e := range entries {
					Equals(t, 1, e.Position)
				}

				left, err := b.LeaveQueue(ctx, holder.Project, holder.Workspace, repo, 3)
				Ok(t, err)
				Assert(t, left, "pull 3 was queued")
				left, err = b.LeaveQueue(ctx, holder.Project, holder.Workspace, repo, 3)
				Ok(t, err)
				Assert(t, !left, "pull 3 left twice")
				gone, err := b.LeaveQueues(ctx, repo, 2)
				Ok(t, err)
				Equals(t, 2, len(gone))
				Equals(t, []int{3}, queuedPulls(t, ctx, b, other))
				Equals(t, []int(nil), queuedPulls(t, ctx, b, holder))

				_, err = b.UnlockByPull(ctx, repo, 1)
				Ok(t, err)
				Equals(t, 0, holderPull(t, ctx, b, holder))
				Equals(t, 3, holderPull(t, ctx, b, other))
				Equals(t, 1, len(claimAll(t, ctx, b)))
				entries, err = b.PullEntries(ctx, repo, 2)
				Ok(t, err)
				Equals(t, 0, len(entries))
			},
		},
		{
			name: "an entry expires after its timeout, with one notice, on a sweep or a release",
			run: func(t *testing.T, ctx context.Context, b QueueingBackend, _ QueueOptions) {
				holder := NewLock(repo, "dir", "default", "", 1)
				mustLock(t, ctx, b, holder)
				swept := mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", 2), enhanced.PriorityCritical, 200*time.Millisecond))
				Assert(t, swept.Entry.Expires.After(swept.Entry.Enqueued), "expiry %s not after %s", swept.Entry.Expires, swept.Entry.Enqueued)
				mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", 3), enhanced.PriorityNormal, queueTimeout))
				time.Sleep(400 * time.Millisecond)
				res, err := b.Sweep(ctx)
				Ok(t, err)
				Equals(t, 1, res.Expired)
				Equals(t, 1, res.Depth)
				Equals(t, []int{3}, queuedPulls(t, ctx, b, holder))
				notices := claimAll(t, ctx, b)
				Equals(t, 1, len(notices))
				Equals(t, enhanced.NoticeExpired, notices[0].Kind)
				Equals(t, 2, notices[0].Entry.Lock.Pull.Num)
				Equals(t, enhanced.PriorityCritical, notices[0].Entry.Priority)
				ackAll(t, ctx, b, notices)

				// An entry that expired before anybody swept is skipped by
				// the release, which announces its expiry.
				mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", 4), enhanced.PriorityCritical, 200*time.Millisecond))
				time.Sleep(400 * time.Millisecond)
				_, err = b.UnlockIfOwnedByPull(ctx, holder.Project, holder.Workspace, 1)
				Ok(t, err)
				Equals(t, 3, holderPull(t, ctx, b, holder))
				kinds := map[enhanced.NoticeKind]int{}
				for _, n := range claimAll(t, ctx, b) {
					kinds[n.Kind] = n.Entry.Lock.Pull.Num
				}
				Equals(t, map[enhanced.NoticeKind]int{enhanced.NoticeExpired: 4, enhanced.NoticeTransferred: 3}, kinds)
			},
		},
		{
			name:        "a lock deleted outside enhanced locking goes to its queue's head on the next sweep",
			needsDelete: true,
			run: func(t *testing.T, ctx context.Context, b QueueingBackend, opts QueueOptions) {
				holder := NewLock(repo, "dir", "default", "", 1)
				mustLock(t, ctx, b, holder)
				mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", 2), enhanced.PriorityNormal, queueTimeout))
				opts.DeleteOutside(t, holder)
				res, err := b.Sweep(ctx)
				Ok(t, err)
				Equals(t, 1, res.Transferred)
				Equals(t, 2, holderPull(t, ctx, b, holder))
				notices := claimAll(t, ctx, b)
				Equals(t, 1, len(notices))
				Equals(t, enhanced.NoticeTransferred, notices[0].Kind)
				// Nothing left to sweep.
				res, err = b.Sweep(ctx)
				Ok(t, err)
				Equals(t, enhanced.SweepResult{}, res)
			},
		},
		{
			name: "a notice is leased to one claim; another claim takes it when the lease ends and finds the steps done, in order",
			run: func(t *testing.T, ctx context.Context, b QueueingBackend, _ QueueOptions) {
				const lease = 300 * time.Millisecond
				first := claimHandOver(t, ctx, b, lease)
				Equals(t, 0, len(first.Done))
				none, err := b.ClaimNotices(ctx, lease, 10)
				Ok(t, err)
				Equals(t, 0, len(none))
				Ok(t, b.MarkNotice(ctx, first, enhanced.StepCommented, lease))
				// A re-plan that started and never ended: the next claim
				// plans again.
				Ok(t, b.MarkNotice(ctx, first, enhanced.StepReplanStarted, lease))

				time.Sleep(lease + 200*time.Millisecond)
				second, err := b.ClaimNotices(ctx, lease, 10)
				Ok(t, err)
				Equals(t, 1, len(second))
				Equals(t, first.ID, second[0].ID)
				Equals(t, []enhanced.NoticeStep{enhanced.StepCommented, enhanced.StepReplanStarted}, second[0].Done)
				Assert(t, !second[0].Has(enhanced.StepReplanned), "a step nobody did is recorded")
				// The first claim lost it: it can neither mark nor ack.
				Assert(t, errors.Is(b.MarkNotice(ctx, first, enhanced.StepReplanned, lease), enhanced.ErrNoticeLost), "stale claim marked a step")
				Assert(t, errors.Is(b.AckNotice(ctx, first), enhanced.ErrNoticeLost), "stale claim acknowledged")
				Ok(t, b.AckNotice(ctx, second[0]))
				time.Sleep(lease + 200*time.Millisecond)
				Equals(t, 0, len(claimAll(t, ctx, b)))
			},
		},
		{
			name: "a claim renews its notice while no other claim took it, even past its lease, and not once another did",
			run: func(t *testing.T, ctx context.Context, b QueueingBackend, _ QueueOptions) {
				const lease = 300 * time.Millisecond
				first := claimHandOver(t, ctx, b, lease)
				// Its lease ran out, but nobody claimed it: renewing holds it
				// again, for a whole lease, with no step recorded.
				time.Sleep(lease + 200*time.Millisecond)
				Ok(t, b.RenewNotice(ctx, first, lease))
				none, err := b.ClaimNotices(ctx, lease, 10)
				Ok(t, err)
				Equals(t, 0, len(none))

				time.Sleep(lease + 200*time.Millisecond)
				second, err := b.ClaimNotices(ctx, lease, 10)
				Ok(t, err)
				Equals(t, 1, len(second))
				Equals(t, 0, len(second[0].Done))
				Assert(t, errors.Is(b.RenewNotice(ctx, first, lease), enhanced.ErrNoticeLost), "a claim renewed a notice another claim took")
				Ok(t, b.RenewNotice(ctx, second[0], lease))
				Ok(t, b.AckNotice(ctx, second[0]))
				Assert(t, errors.Is(b.RenewNotice(ctx, second[0], lease), enhanced.ErrNoticeLost), "a claim renewed a notice it acknowledged")
				time.Sleep(lease + 200*time.Millisecond)
				Equals(t, 0, len(claimAll(t, ctx, b)))
			},
		},
		{
			name: "releases racing for one lock make one transfer and one notice",
			run: func(t *testing.T, ctx context.Context, b QueueingBackend, _ QueueOptions) {
				for round := 0; round < 20; round++ {
					holder := NewLock(repo, fmt.Sprintf("dir%d", round), "default", "", 1)
					mustLock(t, ctx, b, holder)
					mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, holder.Project.Path, "default", "", 2), enhanced.PriorityNormal, queueTimeout))
					mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, holder.Project.Path, "default", "", 3), enhanced.PriorityNormal, queueTimeout))
					var wg sync.WaitGroup
					start := make(chan struct{})
					for i := 0; i < 4; i++ {
						wg.Add(1)
						go func() {
							defer wg.Done()
							<-start
							var err error
							if i%2 == 0 {
								_, err = b.UnlockByPull(ctx, repo, 1)
							} else {
								_, err = b.UnlockIfOwnedByPull(ctx, holder.Project, holder.Workspace, 1)
							}
							if err != nil {
								t.Errorf("round %d: %v", round, err)
							}
						}()
					}
					close(start)
					wg.Wait()
					Equals(t, 2, holderPull(t, ctx, b, holder))
					Equals(t, []int{3}, queuedPulls(t, ctx, b, holder))
					notices := claimAll(t, ctx, b)
					Equals(t, 1, len(notices))
					ackAll(t, ctx, b, notices)
				}
			},
		},
		{
			name:        "queues and notices survive a restart",
			needsReopen: true,
			run: func(t *testing.T, ctx context.Context, b QueueingBackend, opts QueueOptions) {
				holder := NewLock(repo, "dir", "default", "", 1)
				mustLock(t, ctx, b, holder)
				other := NewLock(repo, "other", "default", "", 1)
				mustLock(t, ctx, b, other)
				mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", 2), enhanced.PriorityNormal, queueTimeout))
				mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", 3), enhanced.PriorityHigh, queueTimeout))
				handed := mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "other", "default", "", 2), enhanced.PriorityNormal, queueTimeout))
				_, err := b.UnlockIfOwnedByPull(ctx, other.Project, other.Workspace, 1)
				Ok(t, err)

				b = opts.Reopen(t, b)
				Equals(t, []int{3, 2}, queuedPulls(t, ctx, b, holder))
				Equals(t, 2, holderPull(t, ctx, b, other))
				// The lock is still the entry's: its notice re-plans.
				q, err := b.Queue(ctx, other.Project, other.Workspace)
				Ok(t, err)
				Equals(t, handed.Entry.ID, q.HolderID)
				queues, err := b.Queues(ctx)
				Ok(t, err)
				Equals(t, 1, len(queues))
				Equals(t, 1, queues[0].Holder.Pull.Num)
				notices := claimAll(t, ctx, b)
				Equals(t, 1, len(notices))
				Equals(t, 2, notices[0].Entry.Lock.Pull.Num)
				Equals(t, "other", notices[0].Entry.Lock.Project.Path)
			},
		},
		{
			name: "queues lists every lock with durable entries, holder first",
			run: func(t *testing.T, ctx context.Context, b QueueingBackend, _ QueueOptions) {
				for i, dir := range []string{"a", "b", "c"} {
					holder := NewLock(repo, dir, "default", "", 1)
					mustLock(t, ctx, b, holder)
					for pull := 2; pull < 2+i; pull++ {
						mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, dir, "default", "", pull), enhanced.PriorityNormal, queueTimeout))
					}
				}
				queues, err := b.Queues(ctx)
				Ok(t, err)
				Equals(t, 2, len(queues))
				Equals(t, "b", queues[0].Project.Path)
				Equals(t, 1, len(queues[0].Entries))
				Equals(t, "c", queues[1].Project.Path)
				Equals(t, 2, len(queues[1].Entries))
				Equals(t, 1, queues[1].Holder.Pull.Num)
			},
		},
	}...)
}
