package queue

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/events"
)

// Planner re-runs the plan of one project for the pull that holds its lock,
// on the pull's current head commit. It returns once the plan ran; an error
// says it failed.
type Planner interface {
	Replan(ctx context.Context, lock models.ProjectLock) error
}

// NoticeWatcher is implemented by backends that announce new notices, so
// they are delivered at once rather than at the next poll. An announcement
// made while the watcher is cut off is lost, so a watcher also signals each
// time it is listening again: the claim that follows finds what it missed.
type NoticeWatcher interface {
	WatchNotices(ctx context.Context) <-chan struct{}
}

// DefaultNoticeLease is how long a claimed notice is one replica's to deliver
// unless --enhanced-locking-queue-notice-lease says otherwise.
const DefaultNoticeLease = 2 * time.Minute

// WorkerOptions configures a Worker. Zero values take the defaults.
type WorkerOptions struct {
	// AutoPlan re-plans the project for the pull handed its lock.
	AutoPlan bool
	// Lease is how long a claimed notice is this replica's before another
	// may take it over (default DefaultNoticeLease). The claim is renewed
	// right before each comment, so it must outlast one comment call, or
	// another replica may post the same comment again.
	Lease time.Duration
	// Poll is how often due notices are claimed without an announcement
	// (default 5s): a replica that died mid-delivery is taken over within
	// Lease + Poll.
	Poll time.Duration
	// SweepEvery is how often this replica expires entries and repairs
	// queues (default 30s).
	SweepEvery time.Duration
	Logger     logging.SimpleLogging
	// Events hears of each hand-over, expiry and re-plan as it is
	// delivered: once per fleet, by the replica that delivers it.
	Events events.Publisher
}

// Worker delivers the queue's notices (the comment and the re-plan of a
// hand-over, the comment of an expiry) and sweeps the queues. Every replica
// runs one; the outbox's leases make each notice one replica's at a time.
//
// Each notice is delivered exactly once in the sense that matters: a step
// recorded as done (MarkNotice) is never repeated, and a step is taken only
// while this replica's claim holds the notice: the claim is renewed right
// before the comment (RenewNotice) and checked again as the re-plan is
// recorded, so a claim that another replica took over (its lease ran out
// while the batch's earlier notices were delivered) does nothing more. The
// comment is recorded after it is posted, so a replica that dies between
// the two (a window of one Redis round trip), or whose comment call outlasts
// the lease, leaves it to be posted again: at most a duplicate comment,
// never a missing one. The re-plan is recorded before it starts, so it
// never runs twice; a replica that dies while the plan runs loses the plan
// as upstream does, and the pull keeps the lock.
//
// Hand-overs do not wait for position comments: the pulls whose places a
// notice moved are handed to the notifier, which posts them in the
// background, each once however many notices moved it meanwhile.
type Worker struct {
	queues   enhanced.QueueBackend
	notifier *Notifier
	planner  Planner
	opts     WorkerOptions

	wake chan struct{}
	// plans serialises re-plans per pull: projects of one pull handed over
	// together plan one after the other, as one pull's commands do.
	plans   pullMutexes
	running sync.WaitGroup
}

// NewWorker returns a worker over queues. planner may be nil when
// opts.AutoPlan is off.
func NewWorker(queues enhanced.QueueBackend, notifier *Notifier, planner Planner, opts WorkerOptions) *Worker {
	if opts.Lease <= 0 {
		opts.Lease = DefaultNoticeLease
	}
	if opts.Poll <= 0 {
		opts.Poll = 5 * time.Second
	}
	if opts.SweepEvery <= 0 {
		opts.SweepEvery = 30 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = enhanced.NopLogger{}
	}
	if opts.Events == nil {
		opts.Events = events.PublisherFunc(func(events.Event) {})
	}
	return &Worker{
		queues:   queues,
		notifier: notifier,
		planner:  planner,
		opts:     opts,
		wake:     make(chan struct{}, 1),
	}
}

// claimBatch bounds the notices one claim takes.
const claimBatch = 50

// opTimeout bounds one backend call of the worker.
const opTimeout = 10 * time.Second

// Run delivers and sweeps until ctx is done, then waits for the re-plans it
// started.
func (w *Worker) Run(ctx context.Context) {
	defer w.running.Wait()
	var announced <-chan struct{}
	if watcher, ok := w.queues.(NoticeWatcher); ok {
		announced = watcher.WatchNotices(ctx)
	}
	poll := time.NewTicker(w.opts.Poll)
	defer poll.Stop()
	sweep := time.NewTicker(w.opts.SweepEvery)
	defer sweep.Stop()
	w.Sweep(ctx)
	for {
		if _, err := w.DeliverDue(ctx); err != nil && ctx.Err() == nil {
			w.opts.Logger.Warn("delivering lock queue notices: %s", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-announced:
		case <-w.wake:
		case <-poll.C:
		case <-sweep.C:
			w.Sweep(ctx)
		}
	}
}

// Wake asks for due notices to be delivered now.
func (w *Worker) Wake() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Sweep expires entries and repairs queues, logging what it did.
func (w *Worker) Sweep(ctx context.Context) enhanced.SweepResult {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	res, err := w.queues.Sweep(ctx)
	if err != nil {
		w.opts.Logger.Warn("sweeping the lock queues: %s", err)
		return res
	}
	if res.Expired > 0 || res.Transferred > 0 {
		w.opts.Logger.Info("lock queues: %d entr(y/ies) expired, %d lock(s) deleted outside enhanced locking handed to their queues", res.Expired, res.Transferred)
		w.Wake()
	}
	return res
}

// DeliverDue claims the notices due now and delivers them, returning how
// many it handled: delivered, or dropped as having nobody to tell.
func (w *Worker) DeliverDue(ctx context.Context) (int, error) {
	delivered := 0
	for {
		claimCtx, cancel := context.WithTimeout(ctx, opTimeout)
		notices, err := w.queues.ClaimNotices(claimCtx, w.opts.Lease, claimBatch)
		cancel()
		if err != nil {
			return delivered, err
		}
		var errs []error
		for _, n := range notices {
			err := w.deliver(ctx, n)
			switch {
			case errors.Is(err, enhanced.ErrNoticeLost):
				// Another replica's claim took it, and delivers it.
				w.opts.Logger.Debug("lock queue notice %q: %s", n.ID, err)
			case err != nil:
				errs = append(errs, err)
			default:
				delivered++
			}
		}
		if err := errors.Join(errs...); err != nil || len(notices) < claimBatch {
			return delivered, err
		}
	}
}

// deliver carries out one notice's steps that no earlier claim finished.
func (w *Worker) deliver(ctx context.Context, n enhanced.QueueNotice) error {
	ctx, cancel := context.WithTimeout(ctx, notifyTimeout)
	defer cancel()
	lock := n.Entry.Lock
	q, err := w.queues.Queue(ctx, lock.Project, lock.Workspace)
	if err != nil {
		return err
	}
	switch n.Kind {
	case enhanced.NoticeTransferred:
		if q.Holder == nil || q.Holder.Pull.Num != lock.Pull.Num || q.Holder.Pull.BaseRepo.FullName != lock.Pull.BaseRepo.FullName {
			// Let go again before anybody told it (closed, unlocked):
			// nothing to announce any more.
			w.opts.Logger.Info("lock %q was handed to pull %d, which no longer holds it: not announcing it", key(lock), lock.Pull.Num)
			return w.ack(ctx, n, q)
		}
		if q.HolderID != "" && q.HolderID != n.Entry.ID && !n.Has(enhanced.StepCommented) {
			// The pull took the lock again by a request of its own, a plan
			// whose bounded wait was served by this hand-over: that plan
			// runs, so a re-plan would run it twice.
			w.opts.Logger.Info("lock %q was handed to pull %d, whose own plan took it: not announcing it", key(lock), lock.Pull.Num)
			return w.ack(ctx, n, q)
		}
		if !n.Has(enhanced.StepCommented) {
			if err := w.hold(ctx, n); err != nil {
				return err
			}
			if err := w.notifier.Transferred(n); err != nil {
				return err
			}
			if err := w.queues.MarkNotice(ctx, n, enhanced.StepCommented, w.opts.Lease); err != nil {
				return err
			}
		}
		replan := w.opts.AutoPlan && w.planner != nil && !n.Has(enhanced.StepReplanned)
		if replan {
			if err := w.queues.MarkNotice(ctx, n, enhanced.StepReplanned, w.opts.Lease); err != nil {
				return err
			}
		}
		e := events.Event{Type: events.EventLockTransferred, Time: time.Now(), Lock: &lock}
		if !n.Entry.Enqueued.IsZero() {
			e.Duration = n.At.Sub(n.Entry.Enqueued)
		}
		w.opts.Events.Publish(e)
		if replan {
			w.replan(lock)
		}
	case enhanced.NoticeExpired:
		if !n.Has(enhanced.StepCommented) {
			if err := w.hold(ctx, n); err != nil {
				return err
			}
			if err := w.notifier.Expired(n, q.Holder); err != nil {
				return err
			}
		}
		w.opts.Events.Publish(events.Event{Type: events.EventQueueEntryExpired, Time: time.Now(), Lock: &lock, Current: q.Holder})
	default:
		w.opts.Logger.Warn("dropping lock queue notice %q of unknown kind %q", n.ID, n.Kind)
	}
	return w.ack(ctx, n, q)
}

// hold renews n's claim right before a step that cannot be undone: a claim
// that another took, or whose renewal came back after the lease it asked
// for had ended (a replica frozen meanwhile), takes no more steps.
func (w *Worker) hold(ctx context.Context, n enhanced.QueueNotice) error {
	deadline := time.Now().Add(w.opts.Lease)
	if err := w.queues.RenewNotice(ctx, n, w.opts.Lease); err != nil {
		return err
	}
	if time.Now().After(deadline) {
		return fmt.Errorf("queue notice %q: renewed after the lease ended: %w", n.ID, enhanced.ErrNoticeLost)
	}
	return nil
}

// ack deletes a delivered notice, then has the pull that left the queue
// (its comment now lists only the queues it is still in) and the pulls still
// in it told their new places.
func (w *Worker) ack(ctx context.Context, n enhanced.QueueNotice, q enhanced.LockQueue) error {
	if err := w.queues.AckNotice(ctx, n); err != nil {
		return err
	}
	w.notifier.QueuesMoved(n.Entry.Lock.Pull, []enhanced.LockQueue{q})
	return nil
}

// replan runs the plan in the background, after any other re-plan of the
// same pull.
func (w *Worker) replan(lock models.ProjectLock) {
	k := keyOf(lock.Pull.BaseRepo.FullName, lock.Pull.Num)
	w.opts.Events.Publish(events.Event{Type: events.EventReplanStarted, Time: time.Now(), Lock: &lock})
	w.running.Add(1)
	go func() {
		defer w.running.Done()
		unlock := w.plans.lock(k)
		err := w.planner.Replan(context.Background(), lock)
		unlock()
		if err != nil {
			w.opts.Events.Publish(events.Event{Type: events.EventReplanFailed, Time: time.Now(), Lock: &lock, Err: err})
			w.opts.Logger.Warn("re-planning %q for pull %d, which was handed its lock: %s", key(lock), lock.Pull.Num, err)
		}
	}()
}

// Wait returns once every re-plan this worker started has ended and the
// position comments are posted.
func (w *Worker) Wait() {
	w.running.Wait()
	w.notifier.Wait()
}

func key(lock models.ProjectLock) string {
	return models.GenerateLockKey(lock.Project, lock.Workspace)
}
