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
// on the pull's current head commit, under the pull's command lease.
type Planner interface {
	// Replan calls start once it holds the pull's command lease, right
	// before the plan, and plans only if start returns nil; it returns
	// start's error otherwise. ctx ending while it waits for the lease
	// stops the wait; a plan that started runs to its end. An error wrapping
	// ErrReplanInterrupted says the plan did not run to its end (ctx ended
	// first, or the lease was lost while it ran); any other error says it
	// ran and failed, or was refused and the pull told why.
	Replan(ctx context.Context, lock models.ProjectLock, start func() error) error
}

// ErrReplanInterrupted says a re-plan did not run to its end: the next claim
// of its notice runs it again.
var ErrReplanInterrupted = errors.New("the re-plan did not run to its end")

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
	// another replica may post the same comment again, and every third of
	// it while a re-plan runs.
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
// before the comment (RenewNotice) and before the re-plan, so a claim that
// another replica took over (its lease ran out while the batch's earlier
// notices were delivered, or its replica was frozen) does nothing more. The
// comment is recorded after it is posted, so a replica that dies between
// the two (a window of one Redis round trip), or whose comment call outlasts
// the lease, leaves it to be posted again: at most a duplicate comment,
// never a missing one.
//
// The re-plan keeps the notice claimed, renewed every third of the lease,
// until the plan returned; its end is recorded then, and only then is the
// notice acknowledged. A replica that dies or freezes while the plan runs
// stops renewing, so another replica claims the notice when the lease ends
// and plans again. Two plans of one hand-over never overlap: each starts
// only under the pull's command lease, after checking there that its claim
// still holds the notice (and the pull the lock), and a replica that lost
// the command lease is fenced before it acts again. A plan that ended is
// run again only if its replica dies in the one round trip before its end
// is recorded, or if the claim was lost while the plan ran on (renewals
// failing for a whole lease while the command lease held).
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

// Run delivers and sweeps until ctx is done, then waits for the re-plans
// that started, and records their end; a re-plan still waiting for its
// pull's command lease is left to the next claim.
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

// deliver carries out one notice's steps that no earlier claim finished. A
// re-plan goes on in the background; stopping ends its wait to start.
func (w *Worker) deliver(stopping context.Context, n enhanced.QueueNotice) error {
	ctx, cancel := context.WithTimeout(stopping, notifyTimeout)
	defer cancel()
	lock := n.Entry.Lock
	q, err := w.queues.Queue(ctx, lock.Project, lock.Workspace)
	if err != nil {
		return err
	}
	switch n.Kind {
	case enhanced.NoticeTransferred:
		if !holds(q, lock) {
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
			if err := w.hold(ctx, n, ""); err != nil {
				return err
			}
			if err := w.notifier.Transferred(n); err != nil {
				return err
			}
			// Published with the comment, so a claim that takes over the
			// re-plan does not count the hand-over again.
			e := events.Event{Type: events.EventLockTransferred, Time: time.Now(), Lock: &lock}
			if !n.Entry.Enqueued.IsZero() {
				e.Duration = n.At.Sub(n.Entry.Enqueued)
			}
			w.opts.Events.Publish(e)
			if err := w.queues.MarkNotice(ctx, n, enhanced.StepCommented, w.opts.Lease); err != nil {
				return err
			}
		}
		if w.opts.AutoPlan && w.planner != nil && !n.Has(enhanced.StepReplanned) {
			if n.Has(enhanced.StepReplanStarted) {
				w.opts.Logger.Warn("re-planning %q for pull %d again: the replica that started its re-plan did not finish it", key(lock), lock.Pull.Num)
			}
			w.notifier.QueuesMoved(lock.Pull, []enhanced.LockQueue{q})
			w.replan(stopping, n)
			return nil
		}
	case enhanced.NoticeExpired:
		if !n.Has(enhanced.StepCommented) {
			if err := w.hold(ctx, n, ""); err != nil {
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

// holds says whether lock's pull holds the lock q reads.
func holds(q enhanced.LockQueue, lock models.ProjectLock) bool {
	return q.Holder != nil && q.Holder.Pull.Num == lock.Pull.Num && q.Holder.Pull.BaseRepo.FullName == lock.Pull.BaseRepo.FullName
}

// hold renews n's claim right before a step that cannot be undone,
// recording step with it unless step is empty: a claim that another took,
// or whose renewal came back after the lease it asked for had ended (a
// replica frozen meanwhile), takes no more steps.
func (w *Worker) hold(ctx context.Context, n enhanced.QueueNotice, step enhanced.NoticeStep) error {
	deadline := time.Now().Add(w.opts.Lease)
	var err error
	if step == "" {
		err = w.queues.RenewNotice(ctx, n, w.opts.Lease)
	} else {
		err = w.queues.MarkNotice(ctx, n, step, w.opts.Lease)
	}
	if err != nil {
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

// errLetGo says the pull handed the lock no longer holds it: nothing to
// re-plan.
var errLetGo = errors.New("the pull no longer holds the lock")

// replan runs n's re-plan in the background, after any other re-plan of the
// same pull on this replica, keeping n claimed until the plan returned; then
// it records the end and acknowledges n. A re-plan that has not started
// when stopping ends is left to the next claim.
func (w *Worker) replan(stopping context.Context, n enhanced.QueueNotice) {
	lock := n.Entry.Lock
	w.running.Add(1)
	go func() {
		defer w.running.Done()
		ctx, cancel := context.WithCancelCause(stopping)
		defer cancel(nil)
		stopRenewing := w.keepClaimed(n, cancel)
		unlock := w.plans.lock(keyOf(lock.Pull.BaseRepo.FullName, lock.Pull.Num))
		err := w.planner.Replan(ctx, lock, func() error { return w.startReplan(ctx, n) })
		unlock()
		stopRenewing()
		w.replanned(n, err)
	}()
}

// keepClaimed renews n's claim every third of the lease until the returned
// function is called, so a plan longer than the lease stays this claim's;
// lost is called once another claim took n.
func (w *Worker) keepClaimed(n enhanced.QueueNotice, lost context.CancelCauseFunc) (stop func()) {
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(w.opts.Lease / 3)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), w.opts.Lease/3)
			err := w.queues.RenewNotice(ctx, n, w.opts.Lease)
			cancel()
			if errors.Is(err, enhanced.ErrNoticeLost) {
				lost(err)
				return
			}
			if err != nil {
				w.opts.Logger.Warn("renewing the claim of lock queue notice %q while its re-plan runs: %s", n.ID, err)
			}
		}
	}()
	return func() {
		close(done)
		<-stopped
	}
}

// startReplan is the planner's last check, under the pull's command lease,
// right before the plan: the plan starts only while the pull holds the lock
// and this claim holds n (renewed, and read on this replica's clock), and
// "started" is recorded first.
func (w *Worker) startReplan(ctx context.Context, n enhanced.QueueNotice) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w: stopped before it started: %w", ErrReplanInterrupted, context.Cause(ctx))
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	lock := n.Entry.Lock
	q, err := w.queues.Queue(ctx, lock.Project, lock.Workspace)
	if err != nil {
		return fmt.Errorf("%w: reading who holds the lock: %w", ErrReplanInterrupted, err)
	}
	if !holds(q, lock) {
		return errLetGo
	}
	if err := w.hold(ctx, n, enhanced.StepReplanStarted); err != nil {
		if errors.Is(err, enhanced.ErrNoticeLost) {
			return err
		}
		return fmt.Errorf("%w: %w", ErrReplanInterrupted, err)
	}
	w.opts.Events.Publish(events.Event{Type: events.EventReplanStarted, Time: time.Now(), Lock: &lock})
	return nil
}

// replanned records how n's re-plan ended: a plan that ran, failed or was
// refused is done and n acknowledged; one that did not run to its end is
// left to the next claim, once this claim's lease ends.
func (w *Worker) replanned(n enhanced.QueueNotice, err error) {
	lock := n.Entry.Lock
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	switch {
	case errors.Is(err, errLetGo):
		w.opts.Logger.Info("lock %q was handed to pull %d, which no longer holds it: not re-planning it", key(lock), lock.Pull.Num)
	case errors.Is(err, enhanced.ErrNoticeLost):
		// Another replica's claim took it, and re-plans it.
		w.opts.Logger.Debug("lock queue notice %q: %s", n.ID, err)
		return
	case errors.Is(err, ErrReplanInterrupted):
		w.opts.Logger.Warn("re-planning %q for pull %d, which was handed its lock, is left to the next claim: %s", key(lock), lock.Pull.Num, err)
		return
	default:
		if err != nil {
			w.opts.Events.Publish(events.Event{Type: events.EventReplanFailed, Time: time.Now(), Lock: &lock, Err: err})
			w.opts.Logger.Warn("re-planning %q for pull %d, which was handed its lock: %s", key(lock), lock.Pull.Num, err)
		}
		if err := w.queues.MarkNotice(ctx, n, enhanced.StepReplanned, w.opts.Lease); err != nil {
			w.opts.Logger.Warn("recording the end of the re-plan of %q for pull %d (another replica may plan it again): %s", key(lock), lock.Pull.Num, err)
			return
		}
	}
	if err := w.queues.AckNotice(ctx, n); err != nil {
		w.opts.Logger.Warn("acknowledging lock queue notice %q: %s", n.ID, err)
	}
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
