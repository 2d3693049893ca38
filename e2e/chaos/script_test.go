package chaos

import (
	"time"
)

// queueScript is a scenario's own queue on scriptDir, beside the traffic:
// holder holds the lock and queued waits behind it, so that a fault always
// finds a lock held and a queue waiting.
type queueScript struct {
	w              *world
	holder, queued *actor
	// since is the comment before queued's refused plan.
	since int64
}

// scriptQueue plans holder, then queued, which is refused and queued.
func (w *world) scriptQueue() *queueScript {
	w.t.Helper()
	s := &queueScript{w: w, holder: w.newActor(scriptDir, 0), queued: w.newActor(scriptDir, 1)}
	if out, _ := s.holder.plan(); out != planned {
		w.t.Fatalf("%s: the scenario's holder #%d did not plan %s (outcome %d)", w.name, s.holder.pr.Number, scriptDir, out)
	}
	out, since := s.queued.plan()
	if out != lockedOut || !s.queued.awaitQueued(since) {
		w.t.Fatalf("%s: #%d was not queued behind #%d on %s (outcome %d)", w.name, s.queued.pr.Number, s.holder.pr.Number, scriptDir, out)
	}
	s.since = since
	return s
}

// finish merges the holder (unless the scenario did), which hands the lock
// to the queued pull, and merges that one once it is re-planned.
func (s *queueScript) finish() {
	if s.holder.pr != nil {
		s.holder.release(opMerge)
	}
	if s.queued.awaitHandOver(s.since) {
		s.queued.release(opMerge)
	}
}

// startScenario starts the traffic and the scenario's own queue, and lets
// them run a while: the world a fault is injected into.
func (w *world) startScenario() (*traffic, *queueScript) {
	w.t.Helper()
	tr := w.startTraffic()
	script := w.scriptQueue()
	w.run(4 * time.Second)
	return tr, script
}

// endScenario lets the traffic run a while after the fault, then has
// everyone let go, and checks the history.
func (w *world) endScenario(tr *traffic, script *queueScript) {
	w.t.Helper()
	w.run(5 * time.Second)
	script.finish()
	tr.stopTraffic()
	w.verdict()
}

// run lets the traffic go on for d.
func (w *world) run(d time.Duration) {
	select {
	case <-time.After(d):
	case <-w.ctx.Done():
	}
}

// quiesce closes the gate and waits until no actor has had a command in
// flight for settle: what Redis holds then was written at least settle ago.
func (w *world) quiesce(tr *traffic, settle time.Duration) {
	w.t.Helper()
	w.gate.close()
	var since time.Time
	w.waitUntil("the traffic to quiesce", 2*answerTimeout, func() (bool, string) {
		if !tr.quiet() {
			since = time.Time{}
			return false, "commands in flight"
		}
		if since.IsZero() {
			since = time.Now()
		}
		return time.Since(since) >= settle, "settling"
	})
}
