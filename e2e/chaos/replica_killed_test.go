package chaos

import (
	"fmt"
	"strings"
	"testing"
	"time"

	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/e2e/e2ekit"
)

// TestReplicaKilledMidPlan: under traffic, a replica is SIGKILLed while it
// plans a pull (its plan stalls in its first step, after the lock was
// taken), and started again. The pull keeps its lock, as with upstream,
// until it is unlocked; the traffic's commands that were on the dead
// replica fail or are taken over once their command lease lapses; nothing
// overlaps and no lock is granted twice.
func TestReplicaKilledMidPlan(t *testing.T) {
	w := newWorld(t, "replica-killed-mid-plan", worldOptions{})
	tr, script := w.startScenario()

	victim := w.live()[0]
	a := w.newActor(probeDir, 0)
	w.stall(a.pr)
	if _, ok := w.send(victim, a.pr, opPlan); !ok {
		t.Fatalf("%s: %s did not take the plan of #%d", w.name, victim.Name(), a.pr.Number)
	}
	w.waitUntil(fmt.Sprintf("#%d's plan to run on %s, holding the lock", a.pr.Number, victim.Name()), answerTimeout, func() (bool, string) {
		spans, err := e2ekit.ReadSpans(w.spans)
		if err != nil {
			return false, err.Error()
		}
		running := false
		for _, s := range spans {
			running = running || (s.Pull == a.pr.Number && s.PID == victim.PID() && s.End.IsZero())
		}
		holder, err := w.holder(w.ctx, probeDir)
		return running && holder == a.pr.Number, fmt.Sprintf("running %v, holder #%d (%v)", running, holder, err)
	})
	w.kill(victim)
	w.unstall(a.pr)
	w.restart(victim.Name() + "-again")

	time.Sleep(250 * time.Millisecond)
	holder, err := w.holder(w.ctx, probeDir)
	Ok(t, err)
	Assert(t, holder == a.pr.Number, "%s: #%d lost its lock when its replica died: Redis shows #%d", w.name, a.pr.Number, holder)
	a.release(opUnlock)
	a.release(opMerge)
	w.endScenario(tr, script)
}

// TestReplicaKilledMidHandOver: under traffic, a merge on one replica hands
// a lock to the pull queued for it, and that replica is SIGKILLed while its
// hand-over comment is on its way to GitHub (the stand-in holds it, so it
// never arrives); the other replica, paused until then so that the victim
// is the one announcing, takes the notice over once its lease lapses. The
// queued pull is handed the lock and re-planned exactly once.
func TestReplicaKilledMidHandOver(t *testing.T) {
	w := newWorld(t, "replica-killed-mid-handover", worldOptions{})
	tr, script := w.startScenario()

	live := w.live()
	victim, survivor := live[0], live[1]
	hold := w.sim.HoldComments(func(body string) bool {
		return e2ekit.IsHandedOver(body) && strings.Contains(body, "`"+scriptDir+"`")
	})
	Ok(t, survivor.Pause())
	resumed := false
	defer func() {
		if !resumed {
			_ = survivor.Resume()
		}
	}()
	if _, ok := w.send(victim, script.holder.pr, opMerge); !ok {
		t.Fatalf("%s: %s did not take the merge of #%d", w.name, victim.Name(), script.holder.pr.Number)
	}
	select {
	case <-hold.Arrived():
	case <-time.After(answerTimeout):
		t.Fatalf("%s: %s did not start announcing the hand-over to #%d", w.name, victim.Name(), script.queued.pr.Number)
	}
	w.kill(victim)
	w.waitUntil("the dead replica's comment to be dropped", 10*time.Second, func() (bool, string) {
		return hold.Dropped() == 1, fmt.Sprintf("%d dropped", hold.Dropped())
	})
	hold.Release()
	Ok(t, survivor.Resume())
	resumed = true
	w.restart(victim.Name() + "-again")

	// Merged above: finish hands over to the queued pull only.
	script.holder.pr = nil
	w.endScenario(tr, script)
}
