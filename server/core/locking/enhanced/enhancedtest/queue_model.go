package enhancedtest

import (
	"slices"
	"sort"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// queueModel is the reference that RunQueueModel checks a backend against:
// the contract of enhanced.QueueBackend written as plainly as it can be, with
// no storage, no concurrency and no clock. Per lock it keeps the holder and
// the durable entries in queue order; beside them, the outbox of notices.
//
// Order. An entry sorts by its score, arrival minus headstart
// (enhanced.Priority.Headstart), and entries of equal score by arrival. The
// suite arrives on a virtual clock, in whole hours, and passes the virtual
// time into the headstart it asks for (queueModelHeadstart), so the score a
// backend computes from its own clock is the virtual score plus the real
// time since the run began: far below an hour, so it changes no order the
// virtual scores decide and breaks their ties by arrival, as the model does.
//
// Expiry. An entry either waits far longer than the run or has already
// expired when the operation that queued it returns (the suite waits its
// timeout out), so expiry needs no clock either: an expired entry stays in
// its queue until a release reaches it or a sweep runs, and then leaves with
// an expired notice, or until its pull queues again and it is replaced,
// without one. Meanwhile it waits for nothing: no read lists it or counts it
// in a position.
//
// Waits. A queued pull that plans again waits through its entry: the wait
// adds no place to the line, and the hand-over to the entry is the wait's,
// a request of the pull's own (the suite's waitQueued).
type queueModel struct {
	locks map[string]*modelLock
	// outbox holds a notice per entry that left by hand-over or expiry, until
	// it is acknowledged.
	outbox map[noticeKey]*modelNotice
	// arrivals numbers the entries in the order they joined.
	arrivals int
	// ids holds every entry id a backend gave out: a lock its pull took by
	// a request of its own is never held by one of them.
	ids map[string]bool
}

type modelLock struct {
	project   models.Project
	workspace string
	holder    *models.ProjectLock
	// handedTo is the id of the entry the lock was handed to, until its pull
	// takes the lock again by a request of its own.
	handedTo string
	entries  []*modelEntry
}

type modelEntry struct {
	id string
	// lock is the value the entry installs when it is handed the lock.
	lock     models.ProjectLock
	priority enhanced.Priority
	score    time.Duration
	arrival  int
	// enqueued and expires are as the backend reported them when the entry
	// joined; they never change.
	enqueued, expires time.Time
	expired           bool
}

type noticeKey struct {
	kind  enhanced.NoticeKind
	entry string
}

type modelNotice struct {
	entry modelEntry
	done  []enhanced.NoticeStep
}

func newQueueModel() *queueModel {
	return &queueModel{locks: map[string]*modelLock{}, outbox: map[noticeKey]*modelNotice{}, ids: map[string]bool{}}
}

func lockKey(l models.ProjectLock) string {
	return models.GenerateLockKey(l.Project, l.Workspace)
}

func (m *queueModel) lock(l models.ProjectLock) *modelLock {
	key := lockKey(l)
	ml, ok := m.locks[key]
	if !ok {
		ml = &modelLock{project: l.Project, workspace: l.Workspace}
		m.locks[key] = ml
	}
	return ml
}

// keys returns the lock keys in lock key order, the order of every listing.
func (m *queueModel) keys() []string {
	keys := make([]string, 0, len(m.locks))
	for k := range m.locks {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func samePull(a, b models.ProjectLock) bool {
	return a.Pull.BaseRepo.FullName == b.Pull.BaseRepo.FullName && a.Pull.Num == b.Pull.Num
}

func (ml *modelLock) entryOf(repo string, pull int) (int, *modelEntry) {
	for i, e := range ml.entries {
		if e.lock.Pull.BaseRepo.FullName == repo && e.lock.Pull.Num == pull {
			return i, e
		}
	}
	return -1, nil
}

// remove takes the entry at i out of the queue.
func (ml *modelLock) remove(i int) *modelEntry {
	e := ml.entries[i]
	ml.entries = slices.Delete(ml.entries, i, i+1)
	return e
}

// tryLock: a free lock is taken, a lock the pull holds is held again (the
// value stays the first request's), and a pull that holds a lock no longer
// waits for it.
func (m *queueModel) tryLock(l models.ProjectLock) (bool, models.ProjectLock) {
	ml := m.lock(l)
	switch {
	case ml.holder == nil:
		held := l
		ml.holder = &held
	case samePull(*ml.holder, l):
	default:
		return false, *ml.holder
	}
	ml.handedTo = ""
	if i, _ := ml.entryOf(l.Pull.BaseRepo.FullName, l.Pull.Num); i >= 0 {
		ml.remove(i)
	}
	return true, *ml.holder
}

// enqueueOutcome is what an Enqueue must answer.
type enqueueOutcome struct {
	queued, joined bool
	holder         *models.ProjectLock
	// entry is the pull's entry, nil when not queued or when the entry is
	// new and still needs the id the backend gives it (join).
	entry    *modelEntry
	position int
}

// enqueue: nothing is queued for a free lock or the pull's own; a pull
// already queued keeps its entry, place, priority and expiry, unless the
// entry expired: then it leaves, without a notice, for the new one.
func (m *queueModel) enqueue(l models.ProjectLock) enqueueOutcome {
	ml := m.lock(l)
	if ml.holder == nil || samePull(*ml.holder, l) {
		return enqueueOutcome{holder: ml.holder}
	}
	out := enqueueOutcome{queued: true, holder: ml.holder}
	if i, e := ml.entryOf(l.Pull.BaseRepo.FullName, l.Pull.Num); e != nil {
		if !e.expired {
			out.entry, out.position = e, ml.position(i)
			return out
		}
		ml.remove(i)
	}
	out.joined = true
	return out
}

// position is the place in the line of the entry at i, which waits: the
// entries ahead of it that wait, plus one.
func (ml *modelLock) position(i int) int {
	n := 1
	for _, e := range ml.entries[:i] {
		if !e.expired {
			n++
		}
	}
	return n
}

// line lists the entries that wait, each with its position.
func (ml *modelLock) line(key string) []positioned {
	var out []positioned
	for i, e := range ml.entries {
		if !e.expired {
			out = append(out, positioned{key, e, ml.position(i)})
		}
	}
	return out
}

// join adds a new entry, with what the backend reported of it, and returns
// its position.
func (m *queueModel) join(e *modelEntry) int {
	ml := m.lock(e.lock)
	m.arrivals++
	e.arrival = m.arrivals
	m.ids[e.id] = true
	at := sort.Search(len(ml.entries), func(i int) bool {
		x := ml.entries[i]
		return x.score > e.score || x.score == e.score && x.arrival > e.arrival
	})
	ml.entries = slices.Insert(ml.entries, at, e)
	return ml.position(at)
}

func (m *queueModel) leaveQueue(l models.ProjectLock) bool {
	ml := m.lock(l)
	i, _ := ml.entryOf(l.Pull.BaseRepo.FullName, l.Pull.Num)
	if i < 0 {
		return false
	}
	ml.remove(i)
	return true
}

// positioned is an entry with its position, as PullEntries and LeaveQueues
// report it.
type positioned struct {
	key      string
	entry    *modelEntry
	position int
}

// pullEntries lists the pull's entries that wait, in lock key order.
func (m *queueModel) pullEntries(repo string, pull int) []positioned {
	var out []positioned
	for _, key := range m.keys() {
		if i, e := m.locks[key].entryOf(repo, pull); e != nil && !e.expired {
			out = append(out, positioned{key, e, m.locks[key].position(i)})
		}
	}
	return out
}

// leaveQueues removes every entry of the pull and returns those that
// waited.
func (m *queueModel) leaveQueues(repo string, pull int) []positioned {
	left := m.pullEntries(repo, pull)
	for _, key := range m.keys() {
		if i, _ := m.locks[key].entryOf(repo, pull); i >= 0 {
			m.locks[key].remove(i)
		}
	}
	return left
}

func (m *queueModel) notify(kind enhanced.NoticeKind, e *modelEntry) {
	m.outbox[noticeKey{kind, e.id}] = &modelNotice{entry: *e}
}

// handoff ends the holding: the lock goes to the first entry that has not
// expired, and the expired ones ahead of it leave; each leaves a notice. The
// lock is free when no entry is left to take it.
func (m *queueModel) handoff(ml *modelLock) bool {
	ml.holder, ml.handedTo = nil, ""
	for len(ml.entries) > 0 {
		e := ml.remove(0)
		if e.expired {
			m.notify(enhanced.NoticeExpired, e)
			continue
		}
		held := e.lock
		ml.holder, ml.handedTo = &held, e.id
		m.notify(enhanced.NoticeTransferred, e)
		return true
	}
	return false
}

// release frees the lock, if held (by pull, when pull > 0), handing it to
// its queue, and returns the released lock.
func (m *queueModel) release(project models.Project, workspace string, pull int) *models.ProjectLock {
	ml, ok := m.locks[models.GenerateLockKey(project, workspace)]
	if !ok || ml.holder == nil || pull > 0 && ml.holder.Pull.Num != pull {
		return nil
	}
	old := *ml.holder
	m.handoff(ml)
	return &old
}

// unlockByPull releases every lock the pull holds; its entries stay.
func (m *queueModel) unlockByPull(repo string, pull int) []models.ProjectLock {
	var out []models.ProjectLock
	for _, key := range m.keys() {
		ml := m.locks[key]
		if ml.holder != nil && ml.holder.Project.RepoFullName == repo && ml.holder.Pull.Num == pull {
			out = append(out, *m.release(ml.project, ml.workspace, pull))
		}
	}
	return out
}

// sweep expires every expired entry, then hands each free lock with entries
// to its head.
func (m *queueModel) sweep() enhanced.SweepResult {
	var res enhanced.SweepResult
	for _, key := range m.keys() {
		ml := m.locks[key]
		kept := ml.entries[:0]
		for _, e := range ml.entries {
			if e.expired {
				m.notify(enhanced.NoticeExpired, e)
				res.Expired++
				continue
			}
			kept = append(kept, e)
		}
		ml.entries = kept
	}
	for _, key := range m.keys() {
		ml := m.locks[key]
		if ml.holder == nil && len(ml.entries) > 0 && m.handoff(ml) {
			res.Transferred++
		}
		res.Depth += len(ml.entries)
	}
	return res
}

// deleteOutside frees the lock without a hand-over, as an upstream replica
// or an operator does.
func (m *queueModel) deleteOutside(l models.ProjectLock) {
	ml := m.lock(l)
	ml.holder, ml.handedTo = nil, ""
}

// held lists the locks held, in lock key order.
func (m *queueModel) held() []models.ProjectLock {
	var out []models.ProjectLock
	for _, key := range m.keys() {
		if h := m.locks[key].holder; h != nil {
			out = append(out, *h)
		}
	}
	return out
}
