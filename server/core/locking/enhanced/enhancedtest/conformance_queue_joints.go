package enhancedtest

import (
	"context"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// inLine returns the pulls of every member of a lock's line, durable or
// synchronous, head first, and checks their positions count up from 1.
func inLine(t testing.TB, q enhanced.LockQueue) []int {
	t.Helper()
	var pulls []int
	for i, e := range q.Entries {
		Equals(t, i+1, e.Position)
		pulls = append(pulls, e.Lock.Pull.Num)
	}
	return pulls
}

// mustHold locks each dir's default workspace for pull and returns the locks.
func mustHold(t testing.TB, ctx context.Context, b enhanced.Backend, pull int, dirs ...string) []models.ProjectLock {
	t.Helper()
	locks := make([]models.ProjectLock, len(dirs))
	for i, dir := range dirs {
		locks[i] = NewLock(repo, dir, "default", "", pull)
		mustLock(t, ctx, b, locks[i])
	}
	return locks
}

// jointCases are the places where a pull's two ways of asking (a durable
// entry, a synchronous wait) and an entry's expiry meet: one pull has one
// place in a lock's line, and an expired entry is nobody's place.
func jointCases() []queueCase {
	var cases []queueCase
	for _, rel := range releasePaths() {
		cases = append(cases, queueCase{
			name: "the hand-over to a queued pull that plans again serves that plan, once, on " + rel.how,
			run: func(t *testing.T, ctx context.Context, b QueueingBackend, _ QueueOptions) {
				holder := NewLock(repo, "dir", "default", "", 1)
				mustLock(t, ctx, b, holder)
				queued := mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", 2), enhanced.PriorityNormal, queueTimeout))
				// Pull 2 plans again: a bounded wait of the queued pull.
				const wait = 5 * time.Second
				result := startWait(ctx, b, Request(NewLock(repo, "dir", "default", "", 2)), wait)
				AwaitQueue(t, b, holder, 2)

				Ok(t, rel.release(ctx, b, holder))
				// What the queue worker sees, however soon it looks: the entry
				// left by a hand-over, and the lock is held by the plan's own
				// acquisition, so it neither announces nor re-plans what that
				// plan runs.
				notices := claimAll(t, ctx, b)
				Equals(t, 1, len(notices))
				Equals(t, enhanced.NoticeTransferred, notices[0].Kind)
				Equals(t, queued.Entry.ID, notices[0].Entry.ID)
				q, err := b.Queue(ctx, holder.Project, holder.Workspace)
				Ok(t, err)
				Assert(t, q.HolderID != "" && q.HolderID != queued.Entry.ID,
					"the lock names %q as its holding, so the queue worker would also re-plan what pull 2's waiting plan runs", q.HolderID)

				r := receive(t, result)
				Ok(t, r.err)
				Assert(t, r.acquired, "pull 2's waiting plan was not served by the hand-over to its place: after %s it returned the lock of pull %d", r.took, r.lock.Pull.Num)
				Equals(t, 2, r.lock.Pull.Num)
				Equals(t, 2, holderPull(t, ctx, b, holder))
				Equals(t, []int(nil), queuedPulls(t, ctx, b, holder))
				// Its plan's acquisition, still: the wait's own check changed
				// nothing the worker reads.
				again, err := b.Queue(ctx, holder.Project, holder.Workspace)
				Ok(t, err)
				Equals(t, q.HolderID, again.HolderID)
			},
		})
	}
	return append(cases, []queueCase{
		{
			name: "a queued pull that plans again keeps one place in the line",
			run: func(t *testing.T, ctx context.Context, b QueueingBackend, _ QueueOptions) {
				holder := NewLock(repo, "dir", "default", "", 1)
				mustLock(t, ctx, b, holder)
				queued := mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", 2), enhanced.PriorityNormal, queueTimeout))
				mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", 3), enhanced.PriorityNormal, queueTimeout))
				result := startWait(ctx, b, Request(NewLock(repo, "dir", "default", "", 2)), 20*time.Second)
				AwaitQueue(t, b, holder, 3)

				q, err := b.Queue(ctx, holder.Project, holder.Workspace)
				Ok(t, err)
				Equals(t, []int{2, 3}, inLine(t, q))
				Equals(t, queued.Entry.ID, q.Entries[0].ID)
				Assert(t, !q.Entries[0].Synchronous, "pull 2's place is not its durable entry: %+v", q.Entries[0])
				entries, err := b.PullEntries(ctx, repo, 3)
				Ok(t, err)
				Equals(t, 1, len(entries))
				Equals(t, 2, entries[0].Position)
				Equals(t, 3, mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", 4), enhanced.PriorityNormal, queueTimeout)).Entry.Position)

				_, err = b.Unlock(ctx, holder.Project, holder.Workspace)
				Ok(t, err)
				r := receive(t, result)
				Ok(t, r.err)
				Assert(t, r.acquired, "pull 2's waiting plan was not served")
				Equals(t, []int{3, 4}, queuedPulls(t, ctx, b, holder))
			},
		},
		{
			name: "an expired entry is replaced by the pull's next request, a new arrival with a new expiry",
			run: func(t *testing.T, ctx context.Context, b QueueingBackend, _ QueueOptions) {
				holder := NewLock(repo, "dir", "default", "", 1)
				mustLock(t, ctx, b, holder)
				old := mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", 2), enhanced.PriorityHigh, 200*time.Millisecond))
				mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", 3), enhanced.PriorityHigh, queueTimeout))
				time.Sleep(400 * time.Millisecond)

				// Pull 2 plans again before any sweep.
				res := mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", 2), enhanced.PriorityHigh, queueTimeout))
				Assert(t, res.Joined, "pull 2 was told it waits in its entry that expired at %s", old.Entry.Expires)
				Assert(t, res.Entry.ID != old.Entry.ID, "the expired entry %s was kept", old.Entry.ID)
				Assert(t, res.Entry.Expires.After(time.Now()), "the entry expires at %s, in the past", res.Entry.Expires)
				Assert(t, res.Entry.Enqueued.After(old.Entry.Enqueued), "the entry keeps its old arrival %s", res.Entry.Enqueued)
				// A new arrival goes to the back of its priority band.
				Equals(t, 2, res.Entry.Position)
				Equals(t, []int{3, 2}, queuedPulls(t, ctx, b, holder))
				mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", 4), enhanced.PriorityNormal, queueTimeout))
				Equals(t, []int{3, 2, 4}, queuedPulls(t, ctx, b, holder))

				// The expired entry left once, replaced without a notice: the
				// pull is told its new place, never that it expired.
				sweep, err := b.Sweep(ctx)
				Ok(t, err)
				Equals(t, 0, sweep.Expired)
				Equals(t, 0, len(claimAll(t, ctx, b)))
				_, err = b.UnlockIfOwnedByPull(ctx, holder.Project, holder.Workspace, 1)
				Ok(t, err)
				Equals(t, 3, holderPull(t, ctx, b, holder))
				_, err = b.UnlockIfOwnedByPull(ctx, holder.Project, holder.Workspace, 3)
				Ok(t, err)
				Equals(t, 2, holderPull(t, ctx, b, holder))
				kinds := map[enhanced.NoticeKind][]string{}
				for _, n := range claimAll(t, ctx, b) {
					kinds[n.Kind] = append(kinds[n.Kind], n.Entry.ID)
				}
				Equals(t, 2, len(kinds[enhanced.NoticeTransferred]))
				Equals(t, 0, len(kinds[enhanced.NoticeExpired]))
			},
		},
		{
			name: "an expired entry is never read as waiting",
			run: func(t *testing.T, ctx context.Context, b QueueingBackend, _ QueueOptions) {
				holder := mustHold(t, ctx, b, 1, "dir", "other")[0]
				mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", 2), enhanced.PriorityCritical, 200*time.Millisecond))
				mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "other", "default", "", 2), enhanced.PriorityNormal, 200*time.Millisecond))
				mustEnqueue(t, ctx, b, QueueRequest(NewLock(repo, "dir", "default", "", 3), enhanced.PriorityNormal, queueTimeout))
				time.Sleep(400 * time.Millisecond)

				q, err := b.Queue(ctx, holder.Project, holder.Workspace)
				Ok(t, err)
				Equals(t, []int{3}, inLine(t, q))
				entries, err := b.PullEntries(ctx, repo, 3)
				Ok(t, err)
				Equals(t, 1, len(entries))
				Equals(t, 1, entries[0].Position)
				entries, err = b.PullEntries(ctx, repo, 2)
				Ok(t, err)
				Equals(t, 0, len(entries))
				queues, err := b.Queues(ctx)
				Ok(t, err)
				Equals(t, 1, len(queues))
				Equals(t, "dir", queues[0].Project.Path)
				Equals(t, []int{3}, inLine(t, queues[0]))

				// Closing the pull still takes its expired entries out, with
				// no notice: it left by its own doing.
				left, err := b.LeaveQueues(ctx, repo, 2)
				Ok(t, err)
				Equals(t, 0, len(left))
				sweep, err := b.Sweep(ctx)
				Ok(t, err)
				Equals(t, 0, sweep.Expired)
				Equals(t, 0, len(claimAll(t, ctx, b)))
			},
		},
	}...)
}
