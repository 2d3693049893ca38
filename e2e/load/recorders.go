package load

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/queue"
)

// The recorders sit where the queue talks to the rest of the server: the
// policy the adapter tells what it queued, the outbox the worker claims
// notices from, and the VCS client and planner it delivers them through.
// Each passes every call on and records what it saw.

// policyRecorder is the adapter's queue policy.
type policyRecorder struct {
	*queue.Policy
	rec *recorder
}

func (p policyRecorder) Queued(res enhanced.EnqueueResult) {
	e := res.Entry
	p.rec.add(record{Kind: kindQueued, Pull: e.Lock.Pull.Num, Key: e.Lock.Project.Path, Start: monoNow(),
		Entry: e.ID, Joined: res.Joined, Priority: int(e.Priority), Position: e.Position,
		EnqueuedMs: e.Enqueued.UnixMilli(), ExpiresMs: e.Expires.UnixMilli()})
	p.Policy.Queued(res)
}

func (p policyRecorder) Left(entries []enhanced.QueueEntry) {
	now := monoNow()
	for _, e := range entries {
		p.rec.add(record{Kind: kindLeft, Pull: e.Lock.Pull.Num, Key: e.Lock.Project.Path, Start: now, Entry: e.ID})
	}
	p.Policy.Left(entries)
}

// outboxRecorder is the queue worker's view of the backend. The worker's
// delivery goroutine posts and marks every comment; a re-plan's goroutine
// also marks and acknowledges its hand-over, with no comment of its own.
type outboxRecorder struct {
	enhanced.QueueBackend
	watcher  queue.NoticeWatcher
	rec      *recorder
	comments *commenter
}

func (o *outboxRecorder) WatchNotices(ctx context.Context) <-chan struct{} {
	return o.watcher.WatchNotices(ctx)
}

func (o *outboxRecorder) ClaimNotices(ctx context.Context, lease time.Duration, max int) ([]enhanced.QueueNotice, error) {
	start := monoNow()
	notices, err := o.QueueBackend.ClaimNotices(ctx, lease, max)
	end := monoNow()
	for _, n := range notices {
		o.rec.add(noticeRecord(kindClaim, n, record{Start: start, End: end, NoticeKind: string(n.Kind),
			Entry: n.Entry.ID, AtMs: n.At.UnixMilli(), EnqueuedMs: n.Entry.Enqueued.UnixMilli(), Priority: int(n.Entry.Priority)}))
	}
	return notices, err
}

// MarkNotice follows the comment of a hand-over, which it attributes.
func (o *outboxRecorder) MarkNotice(ctx context.Context, n enhanced.QueueNotice, step enhanced.NoticeStep, lease time.Duration) error {
	if step == enhanced.StepCommented {
		o.comments.attribute(n, true)
	}
	err := o.QueueBackend.MarkNotice(ctx, n, step, lease)
	o.rec.add(noticeRecord(kindMark, n, withErr(record{Start: monoNow(), Step: string(step)}, err)))
	return err
}

// AckNotice follows the comment of an expiry, if it was posted now. A
// hand-over's acknowledgement follows its re-plan, on the re-plan's
// goroutine, and claims no comment.
func (o *outboxRecorder) AckNotice(ctx context.Context, n enhanced.QueueNotice) error {
	if n.Kind == enhanced.NoticeExpired {
		o.comments.attribute(n, false)
	}
	err := o.QueueBackend.AckNotice(ctx, n)
	o.rec.add(noticeRecord(kindAck, n, withErr(record{Start: monoNow()}, err)))
	return err
}

func noticeRecord(kind string, n enhanced.QueueNotice, r record) record {
	r.Kind, r.Notice = kind, n.ID
	r.Pull, r.Key = n.Entry.Lock.Pull.Num, n.Entry.Lock.Project.Path
	return r
}

// commenter is the VCS client the queue comments through. The notifier posts
// position comments under a command name and the comments of hand-overs and
// expiries under none; the worker posts the latter from its one delivery
// goroutine, each followed by the outbox call that names its notice.
type commenter struct {
	rec *recorder

	mu        sync.Mutex
	pending   *record
	positions int
}

func (c *commenter) CreateComment(_ logging.SimpleLogging, _ models.Repo, pullNum int, _ string, command string) error {
	now := monoNow()
	c.mu.Lock()
	defer c.mu.Unlock()
	if command != "" {
		c.positions++
		return nil
	}
	if c.pending != nil {
		c.rec.add(record{Kind: kindAnomaly, Err: fmt.Sprintf("a notice comment on pull %d before the one on pull %d was attributed", pullNum, c.pending.Pull)})
	}
	c.pending = &record{Kind: kindCommented, Pull: pullNum, Start: now}
	return nil
}

func (c *commenter) HidePrevCommandComments(logging.SimpleLogging, models.Repo, int, string, string) error {
	return nil
}

// attribute records the comment posted last as notice n's; required says
// there must be one.
func (c *commenter) attribute(n enhanced.QueueNotice, required bool) {
	c.mu.Lock()
	p := c.pending
	c.pending = nil
	c.mu.Unlock()
	then := "acknowledgement"
	if required {
		then = "mark"
	}
	switch {
	case p == nil && required:
		c.rec.add(record{Kind: kindAnomaly, Err: fmt.Sprintf("notice %s marked commented with no comment posted", n.ID)})
	case p == nil:
	case p.Pull != n.Entry.Lock.Pull.Num:
		c.rec.add(record{Kind: kindAnomaly, Err: fmt.Sprintf("a comment on pull %d followed by the %s of notice %s (pull %d)", p.Pull, then, n.ID, n.Entry.Lock.Pull.Num)})
	default:
		c.rec.add(noticeRecord(kindCommented, n, *p))
	}
}

// planner is the server's re-planner: a plan of the one project, through the
// same locking client as the traffic, once the worker's last check passed.
type planner struct {
	traffic *traffic
}

func (p planner) Replan(_ context.Context, lock models.ProjectLock, start func() error) error {
	if err := start(); err != nil {
		return err
	}
	p.traffic.rec.add(record{Kind: kindReplanned, Pull: lock.Pull.Num, Key: lock.Project.Path, Start: monoNow()})
	return p.traffic.plan(kindReplan, lock.Pull, lock.Project.Path)
}
