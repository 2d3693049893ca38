package deadlock

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"
	tally "github.com/uber-go/tally/v4"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/events"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/queue"
)

// Resolution is what the detector does with a deadlock.
type Resolution string

const (
	// Notify comments on every pull of the deadlock, once per
	// Options.NotifyAgainAfter while it lasts.
	Notify Resolution = "notify"
	// ReleaseVictim frees one pull of the deadlock (Deadlock.Victim): takes
	// it out of every queue and frees its locks the others wait for, then
	// comments on every pull.
	ReleaseVictim Resolution = "release-victim"
)

// PullGuard keeps a pull's commands from running while its locks are freed,
// so a plan of the victim taking locks at that very moment (the enqueue that
// closed the deadlock is often its own) finishes first and no plan file is
// written after its lock went. The server holds the pull's command lease.
type PullGuard interface {
	// Hold returns once no command of pull runs, and none starts before
	// release is called.
	Hold(ctx context.Context, pull enhanced.PullRef) (release func(), err error)
}

// Releaser frees a victim.
type Releaser interface {
	// LeaveQueues takes the pull out of every lock queue, returning the
	// entries that left.
	LeaveQueues(ctx context.Context, pull enhanced.PullRef) ([]enhanced.QueueEntry, error)
	// Release frees lock if its pull still holds it, handing it to the next
	// in its queue as every release does; it reports whether it freed it.
	Release(ctx context.Context, lock models.ProjectLock) (bool, error)
}

// Options configures a Detector. Zero values take the defaults.
type Options struct {
	// Resolution is Notify unless set.
	Resolution Resolution
	// Interval between checks run by Run; zero checks only when triggered.
	Interval time.Duration
	// NotifyAgainAfter is how long a deadlock the pulls were told of is not
	// told again while it lasts (default 24h). It is the notify claim's TTL.
	NotifyAgainAfter time.Duration
	// ResolveTimeout bounds one release of a victim, waiting for its
	// commands included (default 20m). It is the release claim's TTL: a
	// replica that dies while it frees a victim leaves the deadlock to the
	// next check after it.
	ResolveTimeout time.Duration
	// Guard, if set, is held on the victim while it is freed.
	Guard PullGuard
	// Releaser frees victims; ReleaseVictim needs it.
	Releaser Releaser
	Logger   logging.SimpleLogging
	Scope    tally.Scope
	Events   events.Publisher
}

const (
	defaultNotifyAgainAfter = 24 * time.Hour
	defaultResolveTimeout   = 20 * time.Minute
	// maxRounds bounds the checks one Check makes after freeing victims:
	// freeing one pull of a deadlock may leave a smaller one among the
	// others, found by the next round.
	maxRounds = 16
)

// Detector finds deadlocks among the pulls in the backend's queues and
// resolves each on one replica. Every replica runs one: each check reads
// every queue, and a claim in the backend keyed by the deadlock's ID makes
// one replica act on it.
type Detector struct {
	queues  enhanced.QueueBackend
	claims  Claims
	vcs     queue.Commenter
	opts    Options
	metrics metrics
	trigger chan struct{}
}

// NewDetector returns a detector reading queues, claiming in claims and
// commenting through vcs.
func NewDetector(queues enhanced.QueueBackend, claims Claims, vcs queue.Commenter, opts Options) (*Detector, error) {
	if opts.Resolution == "" {
		opts.Resolution = Notify
	}
	switch opts.Resolution {
	case Notify:
	case ReleaseVictim:
		if opts.Releaser == nil {
			return nil, fmt.Errorf("deadlock resolution %s needs a releaser", opts.Resolution)
		}
	default:
		return nil, fmt.Errorf("unknown deadlock resolution %q: use %s or %s", opts.Resolution, Notify, ReleaseVictim)
	}
	if opts.NotifyAgainAfter <= 0 {
		opts.NotifyAgainAfter = defaultNotifyAgainAfter
	}
	if opts.ResolveTimeout <= 0 {
		opts.ResolveTimeout = defaultResolveTimeout
	}
	if opts.Logger == nil {
		opts.Logger = enhanced.NopLogger{}
	}
	if opts.Scope == nil {
		opts.Scope = tally.NoopScope
	}
	if opts.Events == nil {
		opts.Events = events.PublisherFunc(func(events.Event) {})
	}
	return &Detector{queues: queues, claims: claims, vcs: vcs, opts: opts, metrics: newMetrics(opts.Scope, opts.Resolution),
		trigger: make(chan struct{}, 1)}, nil
}

// Trigger asks Run for a check soon. It never blocks: it is called on the
// lock path, when an entry is queued; triggers made while a check is due
// make one check.
func (d *Detector) Trigger() {
	select {
	case d.trigger <- struct{}{}:
	default:
	}
}

// Run checks at start, at every interval and when triggered, until ctx is
// done. A check that fails is logged; the next one reads everything again.
// Checks run one at a time, so a release that waits for its victim's
// command (ReleaseVictim with a Guard) holds this replica's next check back
// meanwhile; the other replicas keep checking.
func (d *Detector) Run(ctx context.Context) {
	var tick <-chan time.Time
	if d.opts.Interval > 0 {
		ticker := time.NewTicker(d.opts.Interval)
		defer ticker.Stop()
		tick = ticker.C
	}
	for {
		if _, err := d.Check(ctx); err != nil && ctx.Err() == nil {
			d.opts.Logger.Warn("enhanced locking: checking the lock queues for deadlocks (the next check tries again): %s", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick:
		case <-d.trigger:
		}
	}
}

// Outcome is what one check did with one deadlock.
type Outcome struct {
	Deadlock Deadlock
	// Gone says the re-read found it broken already: one of its waits had
	// ended, or it had ended and begun again.
	Gone bool
	// Claimed says this detector acted on it; another replica did, or this
	// one did in an earlier check, when it is false and the deadlock stood.
	Claimed bool
	// Victim and Freed are the pull freed under ReleaseVictim and the
	// locks it was holding that were freed.
	Victim *enhanced.PullRef
	Freed  []models.ProjectLock
	Err    error
}

// Check reads every queue once, then acts on each deadlock it finds that a
// re-read confirms and this detector claims. After freeing victims it checks
// again, for what they leave. The error is a failure to read the queues;
// failures to act on one deadlock are in its outcome, and logged.
func (d *Detector) Check(ctx context.Context) ([]Outcome, error) {
	var outcomes []Outcome
	for range maxRounds {
		queues, err := d.queues.Queues(ctx)
		if err != nil {
			return outcomes, fmt.Errorf("reading the lock queues: %w", err)
		}
		freed := false
		for _, dl := range NewGraph(queues).Deadlocks() {
			out := d.handle(ctx, dl)
			freed = freed || len(out.Freed) > 0
			outcomes = append(outcomes, out)
		}
		if !freed {
			break
		}
	}
	return outcomes, nil
}

func (d *Detector) handle(ctx context.Context, dl Deadlock) Outcome {
	out := Outcome{Deadlock: dl}
	stands, err := d.stillStands(ctx, dl)
	if err != nil {
		out.Err = err
		d.opts.Logger.Warn("enhanced locking: %s; the next check tries again", err)
		return out
	}
	if !stands {
		out.Gone = true
		return out
	}
	ttl := d.opts.NotifyAgainAfter
	if d.opts.Resolution == ReleaseVictim {
		ttl = d.opts.ResolveTimeout
	}
	out.Claimed, out.Err = d.claims.ClaimOnce(ctx, "deadlock:"+string(d.opts.Resolution)+":"+dl.ID, ttl)
	if out.Err != nil {
		d.opts.Logger.Warn("enhanced locking: claiming deadlock %s (the next check tries again): %s", dl.ID, out.Err)
	}
	if !out.Claimed {
		return out
	}
	d.metrics.detected.Inc(1)
	d.opts.Events.Publish(events.Event{Type: events.EventDeadlockDetected, Time: time.Now(), Lock: &dl.Cycle[0].Lock})
	d.opts.Logger.Warn("enhanced locking: deadlock %s: %s; resolving it by %s", dl.ID, describeWaits(dl), d.opts.Resolution)
	if d.opts.Resolution == ReleaseVictim {
		d.release(ctx, &out)
		return out
	}
	var errs []error
	for _, p := range dl.Pulls {
		errs = append(errs, d.comment(dl, p, notifyComment(dl, p)))
	}
	out.Err = errors.Join(errs...)
	d.resolved(dl, dl.Cycle[0].Lock)
	return out
}

// release frees the deadlock's victim under its guard, once a re-read made
// under the guard shows the deadlock still stands: the victim's own command
// may have been what closed it, and could have broken it by the time it
// ends.
func (d *Detector) release(ctx context.Context, out *Outcome) {
	ctx, cancel := context.WithTimeout(ctx, d.opts.ResolveTimeout)
	defer cancel()
	dl := out.Deadlock
	chosen := dl.victim()
	victim := chosen.pull
	out.Victim = &victim
	if d.opts.Guard != nil {
		done, err := d.opts.Guard.Hold(ctx, victim)
		if err != nil {
			out.Err = fmt.Errorf("waiting for the commands of victim %s to finish: %w", pullKey(victim), err)
			d.opts.Logger.Warn("enhanced locking: deadlock %s: %s; the next check after %s tries again", dl.ID, out.Err, d.opts.ResolveTimeout)
			return
		}
		defer done()
	}
	if stands, err := d.stillStands(ctx, dl); err != nil || !stands {
		out.Gone, out.Err = !stands, err
		d.opts.Logger.Info("enhanced locking: deadlock %s broke before its victim %s was freed (err=%v)", dl.ID, pullKey(victim), err)
		return
	}
	left, err := d.opts.Releaser.LeaveQueues(ctx, victim)
	errs := []error{err}
	for _, lock := range dl.HeldBy(victim) {
		freed, err := d.opts.Releaser.Release(ctx, lock)
		errs = append(errs, err)
		if freed {
			out.Freed = append(out.Freed, lock)
		}
	}
	d.opts.Logger.Warn("enhanced locking: deadlock %s: freed victim %s: %d queue entries, locks %s (errors: %v)",
		dl.ID, pullKey(victim), len(left), lockKeys(out.Freed), errors.Join(errs...))
	for _, p := range dl.Pulls {
		errs = append(errs, d.comment(dl, p, resolvedComment(dl, p, chosen, out.Freed, len(left))))
	}
	out.Err = errors.Join(errs...)
	if len(out.Freed) > 0 {
		d.resolved(dl, out.Freed[0])
	}
}

func (d *Detector) resolved(dl Deadlock, lock models.ProjectLock) {
	d.metrics.resolved.Inc(1)
	d.opts.Events.Publish(events.Event{Type: events.EventDeadlockResolved, Time: time.Now(), Lock: &lock})
}

// comment posts body on pull p of the deadlock.
func (d *Detector) comment(dl Deadlock, p enhanced.PullRef, body string) error {
	repo := pullRequests(dl)[p].BaseRepo
	if err := d.vcs.CreateComment(d.opts.Logger, repo, p.Num, body, ""); err != nil {
		err = fmt.Errorf("commenting deadlock %s on pull %s: %w", dl.ID, pullKey(p), err)
		d.opts.Logger.Warn("enhanced locking: %s", err)
		return err
	}
	return nil
}

// stillStands re-reads the queues of the deadlock's locks and reports
// whether each of its waits is still there with the same entry and the same
// acquisition (Wait.identity). Then every wait lasted from the first read
// to the re-read, so at the moment between the two reads all of them stood
// at once: a real deadlock, although neither read is one snapshot of every
// queue. A wait seen in the first read that had in fact ended before
// another began (a lock handed over between the reads of two queues) fails
// the re-read.
func (d *Detector) stillStands(ctx context.Context, dl Deadlock) (bool, error) {
	var queues []enhanced.LockQueue
	read := map[string]bool{}
	for _, w := range dl.Waits {
		if read[w.Key()] {
			continue
		}
		read[w.Key()] = true
		q, err := d.queues.Queue(ctx, w.Lock.Project, w.Lock.Workspace)
		if err != nil {
			return false, fmt.Errorf("re-reading the queue of lock %q for deadlock %s: %w", w.Key(), dl.ID, err)
		}
		queues = append(queues, q)
	}
	now := map[string]bool{}
	for _, w := range NewGraph(queues).Waits() {
		now[w.identity()] = true
	}
	for _, w := range dl.Waits {
		if !now[w.identity()] {
			return false, nil
		}
	}
	return true, nil
}

// describeWaits is the deadlock in one log line.
func describeWaits(dl Deadlock) string {
	parts := make([]string, len(dl.Waits))
	for i, w := range dl.Waits {
		parts[i] = fmt.Sprintf("%s waits for %q held by %s", pullKey(w.Waiter), w.Key(), pullKey(w.Holder))
	}
	return strings.Join(parts, ", ")
}

func lockKeys(locks []models.ProjectLock) []string {
	keys := make([]string, len(locks))
	for i, l := range locks {
		keys[i] = models.GenerateLockKey(l.Project, l.Workspace)
	}
	return keys
}
