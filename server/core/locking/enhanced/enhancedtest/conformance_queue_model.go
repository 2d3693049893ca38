package enhancedtest

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// QueueModelSeedEnv names the variable that replays a run of RunQueueModel:
// every run logs its seed, and the same seed makes the same operations.
const QueueModelSeedEnv = "ATLANTIS_QUEUE_MODEL_SEED"

// QueueModelOptions configures RunQueueModel.
type QueueModelOptions struct {
	// Ops is how many random operations to run; 10 000 when zero.
	Ops int
	// DeleteOutside deletes a lock behind the backend's back (see
	// QueueOptions); nil leaves that operation out.
	DeleteOutside func(t *testing.T, lock models.ProjectLock)
}

// modelAgingStep is the aging step of the run's requests: a few hours of the
// virtual clock, which advances by whole hours, so aging reorders entries.
const modelAgingStep = 3 * time.Hour

// modelTimeout is the timeout of an entry that must not expire in the run.
const modelTimeout = 24 * time.Hour

// The run's locks and pulls: few, so that queues grow several entries deep
// and operations collide.
var modelProjects = []struct{ path, workspace, name string }{
	{"a", "default", ""}, {"b", "default", ""}, {"c", "staging", ""}, {"d", "default", "web"},
}

const modelPulls = 8

var modelPriorities = []enhanced.Priority{enhanced.PriorityLow, enhanced.PriorityNormal, enhanced.PriorityHigh, enhanced.PriorityCritical}

// RunQueueModel runs random queue operations against b, an empty backend,
// and after every one checks that b agrees with a reference model
// (queueModel) on every holder, every queue in order, every pull's entries
// and every notice. The seed is logged; QueueModelSeedEnv replays it.
func RunQueueModel(t *testing.T, b QueueingBackend, opts QueueModelOptions) {
	seed := time.Now().UnixNano()
	if s := os.Getenv(QueueModelSeedEnv); s != "" {
		var err error
		seed, err = strconv.ParseInt(s, 10, 64)
		Ok(t, err)
	}
	if opts.Ops == 0 {
		opts.Ops = 10000
	}
	t.Logf("queue model: seed %d, %d operations (replay with %s=%d)", seed, opts.Ops, QueueModelSeedEnv, seed)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	r := &modelRun{t: t, ctx: ctx, b: b, opts: opts, m: newQueueModel(), rng: rand.New(rand.NewSource(seed))} // nolint: gosec
	for _, p := range modelProjects {
		r.m.lock(r.newLock(p.path, p.workspace, p.name, 1))
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("queue model: seed %d failed at operation %d; the last operations:\n%s", seed, r.step, strings.Join(r.history, "\n"))
		}
	})
	ops := r.ops()
	total := 0
	for _, op := range ops {
		total += op.weight
	}
	for r.step = 1; r.step <= opts.Ops; r.step++ {
		pick := r.rng.Intn(total)
		for _, op := range ops {
			if pick < op.weight {
				op.run()
				break
			}
			pick -= op.weight
		}
		r.check()
	}
}

// modelRun is one run of RunQueueModel.
type modelRun struct {
	t    *testing.T
	ctx  context.Context
	b    QueueingBackend
	opts QueueModelOptions
	m    *queueModel
	rng  *rand.Rand
	// clock is the virtual time of the run (see queueModel).
	clock   time.Duration
	step    int
	history []string
}

type modelOp struct {
	weight int
	run    func()
}

func (r *modelRun) ops() []modelOp {
	ops := []modelOp{
		{14, r.tryLock},
		{30, r.enqueue},
		{5, r.leaveQueue},
		{12, r.unlockIfOwnedByPull},
		{4, r.unlock},
		{5, r.unlockByPull},
		{3, r.leaveQueues},
		{5, r.sweep},
		{10, r.deliver},
		{3, r.waitQueued},
	}
	if r.opts.DeleteOutside != nil {
		ops = append(ops, modelOp{2, r.deleteOutside})
	}
	return ops
}

// log records an operation for the report of a failed run.
func (r *modelRun) log(format string, args ...any) {
	const keep = 40
	r.history = append(r.history, fmt.Sprintf("%5d ", r.step)+fmt.Sprintf(format, args...))
	if len(r.history) > keep {
		r.history = r.history[1:]
	}
}

func (r *modelRun) newLock(path, workspace, name string, pull int) models.ProjectLock {
	l := NewLock(repo, path, workspace, name, pull)
	// Each request is told apart by its time, as Atlantis stamps them.
	l.User.Username = fmt.Sprintf("user%d", r.step)
	return l
}

// pick returns pull's request for a random project, or, when queued is
// true and some pull is queued, a queued pull's request for its lock.
func (r *modelRun) pick(queued bool) models.ProjectLock {
	if queued {
		var pairs [][2]int
		for i, p := range modelProjects {
			ml := r.m.lock(r.newLock(p.path, p.workspace, p.name, 1))
			for _, e := range ml.entries {
				pairs = append(pairs, [2]int{i, e.lock.Pull.Num})
			}
		}
		if len(pairs) > 0 {
			pair := pairs[r.rng.Intn(len(pairs))]
			p := modelProjects[pair[0]]
			return r.newLock(p.path, p.workspace, p.name, pair[1])
		}
	}
	p := modelProjects[r.rng.Intn(len(modelProjects))]
	return r.newLock(p.path, p.workspace, p.name, 1+r.rng.Intn(modelPulls))
}

// pickHeld returns a random held lock, or a random request when none is.
func (r *modelRun) pickHeld() models.ProjectLock {
	held := r.m.held()
	if len(held) == 0 || r.rng.Intn(4) == 0 {
		return r.pick(false)
	}
	return held[r.rng.Intn(len(held))]
}

func (r *modelRun) tryLock() {
	l := r.pick(r.rng.Intn(5) < 2)
	p := modelPriorities[r.rng.Intn(len(modelPriorities))]
	r.log("TryLock pull %d %s", l.Pull.Num, lockKey(l))
	wantOK, want := r.m.tryLock(l)
	ok, got, err := r.b.TryLock(r.ctx, enhanced.LockRequest{Lock: l, Priority: p, Headstart: r.headstart(p)})
	Ok(r.t, err)
	Equals(r.t, wantOK, ok)
	EqualLocks(r.t, want, got)
}

// headstart is what a request of priority p asks for now: its headstart,
// less the virtual time, which the backend's own clock does not know.
func (r *modelRun) headstart(p enhanced.Priority) time.Duration {
	return p.Headstart(modelAgingStep) - r.clock
}

func (r *modelRun) enqueue() {
	l := r.pick(r.rng.Intn(3) == 0)
	p := modelPriorities[r.rng.Intn(len(modelPriorities))]
	r.clock += time.Duration(r.rng.Intn(3)) * time.Hour
	expiring := r.rng.Intn(10) == 0
	timeout := modelTimeout
	if expiring {
		timeout = time.Millisecond
	}
	r.log("Enqueue pull %d %s %s at %s, timeout %s", l.Pull.Num, lockKey(l), p, r.clock, timeout)
	want := r.m.enqueue(l)
	res, err := r.b.Enqueue(r.ctx, enhanced.QueueRequest{Lock: l, Priority: p, Headstart: r.headstart(p), Timeout: timeout})
	Ok(r.t, err)
	Equals(r.t, want.queued, res.Queued)
	Equals(r.t, normalizedPtr(want.holder), normalizedPtr(res.Holder))
	if !want.queued {
		return
	}
	Equals(r.t, want.joined, res.Joined)
	Equals(r.t, l.Pull.Num, res.Entry.Lock.Pull.Num)
	Equals(r.t, lockKey(l), lockKey(res.Entry.Lock))
	if !want.joined {
		// A repeat keeps the entry as it joined.
		Equals(r.t, want.entry.id, res.Entry.ID)
		Equals(r.t, want.position, res.Entry.Position)
		Equals(r.t, want.entry.priority, res.Entry.Priority)
		Equals(r.t, want.entry.enqueued.UnixNano(), res.Entry.Enqueued.UnixNano())
		Equals(r.t, want.entry.expires.UnixNano(), res.Entry.Expires.UnixNano())
		return
	}
	Equals(r.t, p, res.Entry.Priority)
	Equals(r.t, timeout, res.Entry.Expires.Sub(res.Entry.Enqueued))
	Assert(r.t, res.Entry.ID != "" && !r.m.ids[res.Entry.ID], "entry id %q is not new", res.Entry.ID)
	Equals(r.t, r.m.join(&modelEntry{
		id: res.Entry.ID, lock: l, priority: p, score: r.clock - p.Headstart(modelAgingStep),
		enqueued: res.Entry.Enqueued, expires: res.Entry.Expires, expired: expiring,
	}), res.Entry.Position)
	if expiring {
		// Expired for the backend's clock, to the millisecond it counts in,
		// before the next operation.
		time.Sleep(time.Until(res.Entry.Expires.Add(3 * time.Millisecond)))
	}
}

func (r *modelRun) leaveQueue() {
	l := r.pick(r.rng.Intn(4) != 0)
	r.log("LeaveQueue pull %d %s", l.Pull.Num, lockKey(l))
	want := r.m.leaveQueue(l)
	left, err := r.b.LeaveQueue(r.ctx, l.Project, l.Workspace, repo, l.Pull.Num)
	Ok(r.t, err)
	Equals(r.t, want, left)
}

func (r *modelRun) leaveQueues() {
	pull := r.pick(r.rng.Intn(4) != 0).Pull.Num
	r.log("LeaveQueues pull %d", pull)
	want := r.m.leaveQueues(repo, pull)
	left, err := r.b.LeaveQueues(r.ctx, repo, pull)
	Ok(r.t, err)
	Equals(r.t, seenPositioned(want), seenEntries(left))
}

func (r *modelRun) unlockIfOwnedByPull() {
	l := r.pickHeld()
	pull := l.Pull.Num
	if r.rng.Intn(5) == 0 {
		pull = 1 + r.rng.Intn(modelPulls)
	}
	r.log("UnlockIfOwnedByPull pull %d %s", pull, lockKey(l))
	want := r.m.release(l.Project, l.Workspace, pull)
	got, err := r.b.UnlockIfOwnedByPull(r.ctx, l.Project, l.Workspace, pull)
	Ok(r.t, err)
	Equals(r.t, normalizedPtr(want), normalizedPtr(got))
}

func (r *modelRun) unlock() {
	l := r.pickHeld()
	r.log("Unlock %s", lockKey(l))
	want := r.m.release(l.Project, l.Workspace, 0)
	got, err := r.b.Unlock(r.ctx, l.Project, l.Workspace)
	Ok(r.t, err)
	Equals(r.t, normalizedPtr(want), normalizedPtr(got))
}

func (r *modelRun) unlockByPull() {
	pull := r.pickHeld().Pull.Num
	r.log("UnlockByPull pull %d", pull)
	want := r.m.unlockByPull(repo, pull)
	got, err := r.b.UnlockByPull(r.ctx, repo, pull)
	Ok(r.t, err)
	EqualLockSets(r.t, want, got)
}

func (r *modelRun) sweep() {
	r.log("Sweep")
	want := r.m.sweep()
	got, err := r.b.Sweep(r.ctx)
	Ok(r.t, err)
	Equals(r.t, want, got)
}

// waitQueued makes a queued pull plan again: a bounded wait for a lock it
// has an entry for, behind that entry. While it waits, every read is as the
// model's: the wait adds no place. Then the lock is released: a hand-over
// to the pull's entry must serve the wait, a request of the pull's own;
// any other leaves it waiting, and it is cancelled.
func (r *modelRun) waitQueued() {
	var waiting []*modelEntry
	for _, key := range r.m.keys() {
		if ml := r.m.locks[key]; ml.holder != nil {
			for _, e := range ml.entries {
				if !e.expired {
					waiting = append(waiting, e)
				}
			}
		}
	}
	if len(waiting) == 0 {
		r.log("wait of a queued pull: none queued")
		return
	}
	e := waiting[r.rng.Intn(len(waiting))]
	ml := r.m.lock(e.lock)
	l := r.newLock(e.lock.Project.Path, e.lock.Workspace, e.lock.Project.ProjectName, e.lock.Pull.Num)
	r.clock += time.Hour
	r.log("wait of pull %d %s, queued as %s, then Unlock", l.Pull.Num, lockKey(l), e.id)
	ctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	result := startWait(ctx, r.b, enhanced.LockRequest{Lock: l, Priority: e.priority, Headstart: r.headstart(e.priority)}, time.Minute)
	AwaitQueue(r.t, r.b, l, len(ml.entries)+1)
	r.check()

	want := r.m.release(l.Project, l.Workspace, 0)
	got, err := r.b.Unlock(r.ctx, l.Project, l.Workspace)
	Ok(r.t, err)
	Equals(r.t, normalizedPtr(want), normalizedPtr(got))
	if ml.holder == nil || !samePull(*ml.holder, l) {
		cancel()
		w := receive(r.t, result)
		Assert(r.t, !w.acquired && errors.Is(w.err, context.Canceled), "the wait of pull %d was served by the hand-over of %s to pull %d: %+v", l.Pull.Num, lockKey(l), heldBy(ml.holder), w)
		return
	}
	// The wait took the lock as a request of its own.
	ml.handedTo = ""
	w := receive(r.t, result)
	Ok(r.t, w.err)
	Assert(r.t, w.acquired, "the wait of pull %d was not served by the hand-over to its entry %s", l.Pull.Num, e.id)
	EqualLocks(r.t, *ml.holder, w.lock)
}

func (r *modelRun) deleteOutside() {
	l := r.pickHeld()
	r.log("delete %s outside the backend", lockKey(l))
	r.m.deleteOutside(l)
	r.opts.DeleteOutside(r.t, l)
}

// deliver claims a few notices, as a queue worker does, and acknowledges
// some, marks a step of others, and leaves the rest. Its claims, like the
// check's, lease for no time, so every notice not acknowledged is due again
// at once and every check sees it.
func (r *modelRun) deliver() {
	max := 1 + r.rng.Intn(4)
	r.log("deliver up to %d notices", max)
	claimed, err := r.b.ClaimNotices(r.ctx, 0, max)
	Ok(r.t, err)
	Equals(r.t, min(max, len(r.m.outbox)), len(claimed))
	for _, n := range claimed {
		key := noticeKey{n.Kind, n.Entry.ID}
		want, ok := r.m.outbox[key]
		Assert(r.t, ok, "claimed notice %s of entry %s, which the model does not have", n.Kind, n.Entry.ID)
		switch r.rng.Intn(3) {
		case 0:
			r.log("  acknowledge %s %s", n.Kind, n.Entry.ID)
			Ok(r.t, r.b.AckNotice(r.ctx, n))
			delete(r.m.outbox, key)
		case 1:
			step := []enhanced.NoticeStep{enhanced.StepCommented, enhanced.StepReplanned}[r.rng.Intn(2)]
			r.log("  mark %s %s %s", n.Kind, n.Entry.ID, step)
			Ok(r.t, r.b.MarkNotice(r.ctx, n, step, 0))
			if !want.has(step) {
				want.done = append(want.done, step)
			}
		}
	}
}

func (n *modelNotice) has(step enhanced.NoticeStep) bool {
	for _, s := range n.done {
		if s == step {
			return true
		}
	}
	return false
}

// check compares everything the backend can be asked with the model.
func (r *modelRun) check() {
	t, ctx := r.t, r.ctx
	t.Helper()
	for _, key := range r.m.keys() {
		ml := r.m.locks[key]
		got, err := r.b.GetLock(ctx, ml.project, ml.workspace)
		Ok(t, err)
		Equals(t, normalizedPtr(ml.holder), normalizedPtr(got))
		q, err := r.b.Queue(ctx, ml.project, ml.workspace)
		Ok(t, err)
		Equals(t, normalizedPtr(ml.holder), normalizedPtr(q.Holder))
		// Backends that tell acquisitions apart name the entry the lock was
		// handed to, and no entry once its pull took the lock itself.
		if q.HolderID != "" {
			if ml.handedTo != "" {
				Equals(t, ml.handedTo, q.HolderID)
			} else {
				Assert(t, !r.m.ids[q.HolderID], "lock %s held by a request of its own names entry %s", key, q.HolderID)
			}
		}
		Equals(t, seenPositioned(ml.line(key)), seenEntries(q.Entries))
	}

	queues, err := r.b.Queues(ctx)
	Ok(t, err)
	var wantQueues, gotQueues []string
	for _, key := range r.m.keys() {
		if line := r.m.locks[key].line(key); len(line) > 0 {
			wantQueues = append(wantQueues, fmt.Sprintf("%s held by %d: %d entries", key, heldBy(r.m.locks[key].holder), len(line)))
		}
	}
	for _, q := range queues {
		gotQueues = append(gotQueues, fmt.Sprintf("%s held by %d: %d entries", models.GenerateLockKey(q.Project, q.Workspace), heldBy(q.Holder), len(q.Entries)))
	}
	Equals(t, wantQueues, gotQueues)

	list, err := r.b.List(ctx)
	Ok(t, err)
	EqualLockSets(t, r.m.held(), list)

	for pull := 1; pull <= modelPulls; pull++ {
		entries, err := r.b.PullEntries(ctx, repo, pull)
		Ok(t, err)
		Equals(t, seenPositioned(r.m.pullEntries(repo, pull)), seenEntries(entries))
	}

	notices, err := r.b.ClaimNotices(ctx, 0, 10*len(r.m.outbox)+10)
	Ok(t, err)
	Equals(t, seenModelNotices(r.m.outbox), seenNotices(notices))
}

func heldBy(l *models.ProjectLock) int {
	if l == nil {
		return 0
	}
	return l.Pull.Num
}

func normalizedPtr(l *models.ProjectLock) *models.ProjectLock {
	if l == nil {
		return nil
	}
	n := normalize(*l)
	return &n
}

// seenEntry is what the suite compares of an entry.
type seenEntry struct {
	ID       string
	Position int
	Priority enhanced.Priority
	Lock     models.ProjectLock
	Enqueued int64
	Expires  int64
	// Synchronous is false for every entry: no wait takes part in the run.
	Synchronous bool
}

func seenPositioned(ps []positioned) []seenEntry {
	var out []seenEntry
	for _, p := range ps {
		out = append(out, seenEntry{p.entry.id, p.position, p.entry.priority, normalize(p.entry.lock), p.entry.enqueued.UnixNano(), p.entry.expires.UnixNano(), false})
	}
	return out
}

func seenEntries(es []enhanced.QueueEntry) []seenEntry {
	var out []seenEntry
	for _, e := range es {
		out = append(out, seenEntry{e.ID, e.Position, e.Priority, normalize(e.Lock), e.Enqueued.UnixNano(), e.Expires.UnixNano(), e.Synchronous})
	}
	return out
}

// seenNotice is what the suite compares of a notice.
type seenNotice struct {
	Kind  enhanced.NoticeKind
	Entry seenEntry
	Done  []enhanced.NoticeStep
}

func seenModelNotices(outbox map[noticeKey]*modelNotice) map[noticeKey]seenNotice {
	out := map[noticeKey]seenNotice{}
	for k, n := range outbox {
		e := n.entry
		out[k] = seenNotice{k.kind, seenEntry{e.id, 0, e.priority, normalize(e.lock), e.enqueued.UnixNano(), e.expires.UnixNano(), false}, n.done}
	}
	return out
}

func seenNotices(notices []enhanced.QueueNotice) map[noticeKey]seenNotice {
	out := map[noticeKey]seenNotice{}
	for _, n := range notices {
		e := seenEntries([]enhanced.QueueEntry{n.Entry})[0]
		e.Position = 0
		out[noticeKey{n.Kind, n.Entry.ID}] = seenNotice{n.Kind, e, n.Done}
	}
	return out
}
