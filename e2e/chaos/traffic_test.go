package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/atlantis-enhanced/atlantis/e2e/e2ekit"
	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
	"github.com/atlantis-enhanced/atlantis/testdrive"
)

const (
	// actorsPerDir is how many pulls contend for each traffic project.
	actorsPerDir = 2
	// handOverTimeout bounds a queued pull's wait for the lock. Every holder
	// lets go within seconds, so only a lost entry or notice waits this long.
	handOverTimeout = 75 * time.Second
	// releaseTimeout bounds the wait for a merge to free its pull's lock
	// before the merge is sent again.
	releaseTimeout = 20 * time.Second
	// replanTimeout bounds the wait for the re-plan of a hand-over, which
	// dies with the replica running it; well under handOverTimeout, so that
	// the next pull in line is not kept waiting past it.
	replanTimeout = 30 * time.Second
)

// traffic is the background load: actorsPerDir pulls on each traffic
// project, each planning, then holding the lock a moment or waiting in the
// queue for it, then letting go by `atlantis unlock`, by an apply and a
// merge, or by a merge, over and over, each command to the next live
// replica in turn.
type traffic struct {
	w      *world
	stop   chan struct{}
	done   sync.WaitGroup
	actors int
	// waiting counts the actors waiting for a hand-over.
	waiting atomic.Int32
}

// startTraffic starts the actors; stopTraffic lets them finish.
func (w *world) startTraffic() *traffic {
	tr := &traffic{w: w, stop: make(chan struct{})}
	seed := uint64(time.Now().UnixNano())
	w.t.Logf("%s: traffic seed %d", w.name, seed)
	for i, dir := range trafficDirs {
		for j := range actorsPerDir {
			a := &actor{tr: tr, w: w, dir: dir, rng: rand.New(rand.NewPCG(seed, uint64(i*actorsPerDir+j))), turn: i + j}
			tr.actors++
			tr.done.Add(1)
			go a.run()
		}
	}
	return tr
}

// stopTraffic tells every actor to stop once its pull holds nothing, and
// waits until they have, failing the test if one is stuck.
func (tr *traffic) stopTraffic() {
	tr.w.t.Helper()
	close(tr.stop)
	finished := make(chan struct{})
	go func() {
		tr.done.Wait()
		close(finished)
	}()
	select {
	case <-finished:
	case <-tr.w.ctx.Done():
		tr.w.t.Fatalf("%s: the traffic did not finish: %s", tr.w.name, tr.w.ctx.Err())
	}
}

// quiet says whether every actor waits at the gate or for a hand-over, so
// that no lock or queue changes until the gate opens.
func (tr *traffic) quiet() bool {
	return tr.w.gate.parked()+int(tr.waiting.Load()) == tr.actors
}

func (tr *traffic) stopping() bool {
	select {
	case <-tr.stop:
		return true
	default:
		return tr.w.ctx.Err() != nil
	}
}

// actor is one pull request's author at a time: it plans, waits in the
// queue when told to, and lets go. The traffic runs actors on their own; a
// scenario drives its own actors step by step.
type actor struct {
	w   *world
	dir string
	rng *rand.Rand
	// turn picks the replica of the next command.
	turn int
	pr   *vcssim.PullRequest
	// answer is the first line of Atlantis's answer to the last plan.
	answer string
	// tr is the traffic running the actor, nil for a scenario's own.
	tr *traffic
}

// newActor is an actor on dir for a scenario to drive.
func (w *world) newActor(dir string, turn int) *actor {
	return &actor{w: w, dir: dir, rng: rand.New(rand.NewPCG(1, uint64(turn))), turn: turn - 1, pr: w.openPull(dir)}
}

func (a *actor) run() {
	defer a.tr.done.Done()
	for !a.tr.stopping() {
		a.cycle()
	}
	if a.pr != nil {
		a.release(opMerge)
	}
}

// next is the replica for the actor's next command.
func (a *actor) next() *testdrive.Replica {
	a.turn++
	return a.w.pick(a.turn)
}

// pause waits a moment before the actor tries again.
func (a *actor) pause() {
	select {
	case <-time.After(time.Duration(300+a.rng.IntN(700)) * time.Millisecond):
	case <-a.w.ctx.Done():
	}
}

// planOutcome is what came of a plan.
type planOutcome int

const (
	// planned: the lock was granted and Terraform planned.
	planned planOutcome = iota
	// lockedOut: another pull holds the lock.
	lockedOut
	// failed: no answer (the replica died, or Redis hangs), or a failure;
	// the pull may hold the lock all the same.
	failed
	// notSent: no replica took the webhook.
	notSent
)

// plan sends `atlantis plan` to the next replica and waits for the answer.
// since is the comment before it.
func (a *actor) plan() (outcome planOutcome, since int64) {
	w := a.w
	if !w.gate.pass(w.ctx) {
		return notSent, 0
	}
	r := a.next()
	if r == nil {
		return notSent, 0
	}
	since, ok := w.send(r, a.pr, opPlan)
	if !ok {
		return notSent, since
	}
	answer, ok := w.awaitComment(a.pr, since, r, answerTimeout, isAnswer)
	a.answer, _, _ = strings.Cut(answer.Body, "\n")
	switch {
	case ok && e2ekit.IsPlanned(answer.Body):
		return planned, since
	case ok && e2ekit.IsLockedOut(answer.Body):
		return lockedOut, since
	default:
		return failed, since
	}
}

// cycle plans once and, holding the lock or handed it after a wait in the
// queue, lets it go.
func (a *actor) cycle() {
	if a.pr == nil {
		a.pr = a.w.openPull(a.dir)
	}
	outcome, since := a.plan()
	switch outcome {
	case planned:
	case lockedOut:
		if !a.awaitQueued(since) || !a.awaitHandOver(since) {
			return
		}
	case failed:
		w := a.w
		w.hist.note("#%d: plan failed: %q", a.pr.Number, a.answer)
		a.pause()
		a.release(opUnlock)
		return
	default:
		a.pause()
		return
	}
	time.Sleep(time.Duration(300+a.rng.IntN(1200)) * time.Millisecond)
	switch n := a.rng.IntN(10); {
	case n < 6:
		a.release(opUnlock)
	case n < 8:
		a.apply()
		a.release(opMerge)
	default:
		a.release(opMerge)
	}
}

// awaitQueued follows a refused plan: it says whether the pull was told it
// is queued (or already handed the lock), and records it.
func (a *actor) awaitQueued(since int64) bool {
	queued := func(body string) bool { return e2ekit.IsQueuePosition(body) || e2ekit.IsHandedOver(body) }
	if _, ok := a.w.awaitComment(a.pr, since, nil, 15*time.Second, queued); !ok {
		// Refused and not queued (the queue could not be reached): plan
		// again later.
		a.pause()
		return false
	}
	a.w.hist.queued(a.pr.Number, since)
	return true
}

// awaitHandOver waits until the queue hands the pull the lock and re-plans
// it, and says whether it was; if not, the pull leaves the queue.
func (a *actor) awaitHandOver(since int64) bool {
	w := a.w
	if a.tr != nil {
		a.tr.waiting.Add(1)
	}
	handOver, ok := w.awaitComment(a.pr, since, nil, handOverTimeout, e2ekit.IsHandedOver)
	if a.tr != nil {
		a.tr.waiting.Add(-1)
	}
	if !ok {
		w.hist.note("%s: #%d waited %s in the queue and was never handed the lock", a.dir, a.pr.Number, handOverTimeout)
		a.release(opUnlock)
		return false
	}
	if replan, ok := w.awaitComment(a.pr, handOver.ID, nil, replanTimeout, isAnswer); !ok || !e2ekit.IsPlanned(replan.Body) {
		first, _, _ := strings.Cut(replan.Body, "\n")
		w.hist.note("%s: #%d was handed the lock and its re-plan did not plan (answered: %v %.120q)", a.dir, a.pr.Number, ok, first)
	}
	return true
}

// apply applies the pull's plan, whatever comes of it.
func (a *actor) apply() {
	w := a.w
	if !w.gate.pass(w.ctx) {
		return
	}
	r := a.next()
	if r == nil {
		return
	}
	if since, ok := w.send(r, a.pr, opApply); ok {
		w.awaitComment(a.pr, since, r, answerTimeout, isAnswer)
	}
}

// release lets go of the pull's lock and queue places by kind (unlock or
// merge), sending it again until Atlantis confirms, and after a merge starts
// a new pull.
func (a *actor) release(kind opKind) {
	w := a.w
	for w.ctx.Err() == nil {
		if !w.gate.pass(w.ctx) {
			return
		}
		r := a.next()
		if r == nil {
			a.pause()
			continue
		}
		since, ok := w.send(r, a.pr, kind)
		if ok && a.released(kind, since, r) {
			if kind == opMerge {
				a.pr = nil
			}
			return
		}
		w.t.Logf("%s of #%d on %s not confirmed: sending it again", kind, a.pr.Number, r.Name())
		a.pause()
	}
}

// released waits for Atlantis to confirm a release: the unlock comment, or
// for a merge, which Atlantis does not answer, Redis no longer showing the
// pull as the holder.
func (a *actor) released(kind opKind, since int64, r *testdrive.Replica) bool {
	w := a.w
	if kind == opUnlock {
		c, ok := w.awaitComment(a.pr, since, r, answerTimeout, isAnswer)
		return ok && e2ekit.IsUnlocked(c.Body)
	}
	deadline := time.Now().Add(releaseTimeout)
	for time.Now().Before(deadline) && w.ctx.Err() == nil {
		ctx, cancel := context.WithTimeout(w.ctx, time.Second)
		holder, err := w.holder(ctx, a.dir)
		cancel()
		if err == nil && holder != a.pr.Number {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

// gate holds the actors before their next command while it is closed.
type gate struct {
	mu     sync.Mutex
	closed bool
	open   chan struct{}
	count  int
}

func newGate() *gate {
	g := &gate{open: make(chan struct{})}
	close(g.open)
	return g
}

// pass waits until the gate is open, and says false if ctx ended first.
func (g *gate) pass(ctx context.Context) bool {
	g.mu.Lock()
	open := g.open
	g.count++
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.count--
		g.mu.Unlock()
	}()
	select {
	case <-open:
		return true
	case <-ctx.Done():
		return false
	}
}

// parked is how many actors wait at the closed gate.
func (g *gate) parked() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.closed {
		return 0
	}
	return g.count
}

func (g *gate) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.closed {
		g.closed = true
		g.open = make(chan struct{})
	}
}

func (g *gate) reopen() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		g.closed = false
		close(g.open)
	}
}

// verdict stops nothing: it waits until every lock is free, reads the
// spans and the comments, checks the history, prints the CHAOS line and
// fails the test unless the history is clean.
func (w *world) verdict() {
	w.t.Helper()
	w.waitUntil("every lock to be free", 60*time.Second, func() (bool, string) {
		var held []string
		for _, dir := range allDirs {
			ctx, cancel := context.WithTimeout(w.ctx, time.Second)
			n, err := w.holder(ctx, dir)
			cancel()
			if err != nil || n != 0 {
				held = append(held, fmt.Sprintf("%s: #%d (%v)", dir, n, err))
			}
		}
		return len(held) == 0, strings.Join(held, ", ")
	})
	spans, err := e2ekit.ReadSpans(w.spans)
	if err != nil {
		w.t.Fatalf("%s: %s", w.name, err)
	}
	comments := map[int][]vcssim.Comment{}
	w.mu.Lock()
	for _, pr := range w.pulls {
		comments[pr.Number] = w.sim.Comments(repoFull, pr.Number)
	}
	deaths := make(map[int]time.Time, len(w.deaths))
	for pid, at := range w.deaths {
		deaths[pid] = at
	}
	w.mu.Unlock()
	v := w.hist.check(comments, w.sim.User(), spans, deaths, time.Now())
	w.t.Logf("%s: %s", w.name, v.summary())
	for _, n := range v.notes {
		w.t.Logf("%s: %s", w.name, n)
	}
	fmt.Println(v.line(w.name))
	if !v.clean() || len(v.findings) > 0 {
		w.t.Errorf("%s\n%s", v.line(w.name), strings.Join(v.findings, "\n"))
	}
}
