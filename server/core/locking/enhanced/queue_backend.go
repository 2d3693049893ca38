package enhanced

import (
	"context"
	"errors"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
)

// QueueBackend is implemented by backends that keep durable lock queues: a
// pull that finds a project locked by another pull joins the project's queue
// and is handed the lock when it is released, however long that takes and
// whichever replica releases it.
//
// Implementations keep these invariants under any interleaving of callers,
// processes and restarts:
//   - a pull has at most one entry per lock;
//   - a lock with an unexpired entry is never left free by a release: the
//     release hands it to the queue's head in the same atomic step, so no
//     TryLock can take it in between;
//   - an entry leaves its queue exactly once: handed the lock, expired, or
//     removed by its pull (or replaced by its pull's next Enqueue once
//     expired); a hand-over or an expiry leaves exactly one notice in the
//     outbox, in the same atomic step, which stays there until a replica
//     acknowledges it;
//   - a pull has at most one place in a lock's line, whichever way it asked:
//     a synchronous wait of a pull that has an unexpired entry for the lock
//     (a queued pull that plans again) waits through that entry and adds no
//     place. The hand-over to that place serves exactly one request: while
//     the pull's wait is live it takes the lock, in the hand-over's atomic
//     step, as a request of its own (LockQueue.HolderID then names it, not
//     the entry, and the queue worker does not re-plan); otherwise the entry
//     holds it (HolderID is the entry's ID) and the worker re-plans;
//   - an expired entry holds no place: no read lists it or counts it in a
//     position, and no hand-over serves it.
//
// Synchronous waiters (Backend.TryLockWithTimeout) share the queue and its
// order; they are not durable and leave no notices.
type QueueBackend interface {
	// Enqueue adds the pull's request to the queue of the lock it asks for.
	// A pull already queued for the lock keeps its entry and place; an entry
	// that expired is replaced, without an expiry notice, by a new one at the
	// back of its priority band. When the lock is free or already the
	// pull's, nothing is queued and the result says so: the caller takes the
	// lock instead.
	Enqueue(ctx context.Context, req QueueRequest) (EnqueueResult, error)
	// LeaveQueue removes the pull's entry for one lock, reporting whether
	// there was one.
	LeaveQueue(ctx context.Context, project models.Project, workspace string, repoFullName string, pullNum int) (bool, error)
	// LeaveQueues removes every entry of the pull, as when it is closed or
	// unlocked, and returns those that held a place.
	LeaveQueues(ctx context.Context, repoFullName string, pullNum int) ([]QueueEntry, error)
	// Queue returns one lock's holder and line, head first.
	Queue(ctx context.Context, project models.Project, workspace string) (LockQueue, error)
	// Queues returns every lock that has durable entries holding a place.
	Queues(ctx context.Context) ([]LockQueue, error)
	// PullEntries returns the pull's durable entries that hold a place, each
	// with its position.
	PullEntries(ctx context.Context, repoFullName string, pullNum int) ([]QueueEntry, error)
	// Sweep expires the entries whose time ran out and hands each free lock
	// that has entries to its head (a lock deleted outside enhanced locking,
	// by an upstream replica or by hand, leaves its queue waiting otherwise).
	Sweep(ctx context.Context) (SweepResult, error)
	// ClaimNotices leases up to max notices that nobody holds, for lease. A
	// notice not renewed, marked or acknowledged before its lease ends is
	// claimed again, by any replica.
	ClaimNotices(ctx context.Context, lease time.Duration, max int) ([]QueueNotice, error)
	// RenewNotice renews the lease of a claimed notice, to lease from now, as
	// long as no other claim took it (even after the lease ended: nobody else
	// can deliver it meanwhile). A claim renews a notice right before each
	// step it cannot undo, such as a comment, so one lease covers one step,
	// however many notices the claim took. ErrNoticeLost as for MarkNotice.
	RenewNotice(ctx context.Context, n QueueNotice, lease time.Duration) error
	// MarkNotice records that a delivery step of a claimed notice is done and
	// renews the lease, so a later claim skips the step. It fails with
	// ErrNoticeLost when the claim's lease ended and another claim took it.
	MarkNotice(ctx context.Context, n QueueNotice, step NoticeStep, lease time.Duration) error
	// AckNotice deletes a delivered notice. ErrNoticeLost as for MarkNotice.
	AckNotice(ctx context.Context, n QueueNotice) error
}

// ErrNoticeLost says that a notice's lease ended and another claim took it,
// so this claim must stop delivering it.
var ErrNoticeLost = errors.New("queue notice claimed by another delivery")

// QueueRequest is one pull's request to wait in line for one lock.
type QueueRequest struct {
	// Lock is what the pull asked for; it is what the pull holds once the
	// lock is handed to it.
	Lock     models.ProjectLock
	Priority Priority
	// Headstart places the entry: see LockRequest.Headstart.
	Headstart time.Duration
	// Timeout is how long the entry waits before it expires.
	Timeout time.Duration
}

// EnqueueResult is the outcome of an Enqueue.
type EnqueueResult struct {
	// Queued is false when the lock was free or already the pull's: nothing
	// was queued.
	Queued bool
	// Joined is true when this call created the entry, false when the pull
	// was already queued.
	Joined bool
	Entry  QueueEntry
	// Holder is the lock as it stood, if held.
	Holder *models.ProjectLock
}

// QueueEntry is one request in a lock's queue.
type QueueEntry struct {
	// ID identifies the entry; a notice about it carries it too.
	ID       string
	Lock     models.ProjectLock
	Priority Priority
	// Position is 1 for the head of the queue; 0 where it does not apply
	// (an entry that left its queue).
	Position int
	Enqueued time.Time
	Expires  time.Time
	// Synchronous marks a waiter in a bounded synchronous wait rather than a
	// durable entry; it leaves the queue when its wait ends.
	Synchronous bool
}

// LockQueue is a lock and who waits for it.
type LockQueue struct {
	Project   models.Project
	Workspace string
	// Holder is nil when the lock is free.
	Holder *models.ProjectLock
	// HolderID identifies the acquisition that holds the lock: the ID of
	// the entry the lock was handed to, until its pull takes the lock by a
	// request of its own (then another ID, or "" where the backend does not
	// tell the pull's own acquisitions apart).
	HolderID string
	// Entries is the line: the requests that hold a place, one per pull.
	Entries []QueueEntry
}

// SweepResult counts what a Sweep did.
type SweepResult struct {
	Expired     int
	Transferred int
	// Depth is how many durable entries are queued after the sweep.
	Depth int
}

// NoticeKind says what happened to a queue entry.
type NoticeKind string

const (
	// NoticeTransferred: the lock was handed to the entry's pull.
	NoticeTransferred NoticeKind = "transferred"
	// NoticeExpired: the entry waited its timeout out and left the queue.
	NoticeExpired NoticeKind = "expired"
)

// NoticeStep is one part of delivering a notice, done at most once.
type NoticeStep string

const (
	StepCommented NoticeStep = "commented"
	// StepReplanStarted is recorded right before a re-plan starts; a later
	// claim that finds it without StepReplanned plans again.
	StepReplanStarted NoticeStep = "replan-started"
	// StepReplanned is recorded once the re-plan returned.
	StepReplanned NoticeStep = "replanned"
)

// QueueNotice tells of one hand-over or expiry, to be delivered to the pull
// (a comment, a re-plan) by exactly one replica.
type QueueNotice struct {
	// ID is the transfer id: one per hand-over or expiry, the same on every
	// delivery attempt.
	ID   string
	Kind NoticeKind
	// Entry is the entry that left the queue; its Lock is the lock as it was
	// handed over.
	Entry QueueEntry
	// At is when the hand-over or expiry happened.
	At time.Time
	// Done lists the steps an earlier claim completed.
	Done []NoticeStep
	// Claim identifies this claim of the notice.
	Claim string
}

// Has says whether an earlier claim completed step.
func (n QueueNotice) Has(step NoticeStep) bool {
	for _, s := range n.Done {
		if s == step {
			return true
		}
	}
	return false
}
