package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
	"github.com/atlantis-enhanced/atlantis/testdrive"
)

// raceRounds is how many times two pulls race for one project; a round takes
// about a third of a second. With upstream's read-then-write Redis locking on
// both replicas, both pulls got the lock in 8 and 12 rounds of 200
// (TestMixedFleetSimultaneousPlans with E2E_MIXED_CONFIGS=off on a 2-core
// machine), so 30 rounds catch that kind of bug about three times in four.
const raceRounds = 30

// TestSimultaneousPlansOnTwoReplicas: two pull requests comment `atlantis
// plan` on the same project at the same instant, one on each replica.
// Exactly one gets the lock and a plan; the other is told who holds it.
func TestSimultaneousPlansOnTwoReplicas(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	// No "opened" webhooks: the pulls exist on GitHub, so comments work,
	// but nothing autoplans and takes the lock before the race.
	prs := [2]*vcssim.PullRequest{h.openPR(1), h.openPR(2)}

	wins := map[int]int{}
	for round := 1; round <= raceRounds; round++ {
		replicas := h.raceReplicas(round)
		marks, answers := h.planAtOnce(round, prs, replicas)
		winner, loser, ok := oneWinner(answers)
		if !ok {
			t.Fatalf("round %d: want one plan and one refusal, got:\n%s", round, describeAnswers(prs, replicas, answers))
		}
		h.checkOneWinner(round, prs, marks, answers, winner)
		w, l := prs[winner].Number, prs[loser].Number
		wins[w]++
		t.Logf("round %d: #%d (on %s) got the lock and planned; #%d (on %s) was told #%d holds it; outcomes logged %s apart",
			round, w, replicas[winner].Name(), l, replicas[loser].Name(), w, lockAttemptGap(replicas[winner], replicas[loser]))
		h.checkRedisConsistent()

		// Reset for the next round.
		h.unlock(replicas[loser], prs[winner])
	}
	t.Logf("%d rounds: exactly one winner each time; #1 won %d, #2 won %d", raceRounds, wins[1], wins[2])
	h.checkRedisConsistent()
}

// raceReplicas is which replica each of two racing pulls comments on in
// round: replica 1 and replica 2, swapped every other round.
func (h *harness) raceReplicas(round int) [2]*testdrive.Replica {
	if round%2 == 0 {
		return [2]*testdrive.Replica{h.r2, h.r1}
	}
	return [2]*testdrive.Replica{h.r1, h.r2}
}

// planAtOnce comments `atlantis plan` on prs[i] through replicas[i], both
// webhooks leaving at the same instant, and waits until both plans finished.
// It returns where each pull's history stood before, and Atlantis's answer on
// each.
func (h *harness) planAtOnce(round int, prs [2]*vcssim.PullRequest, replicas [2]*testdrive.Replica) ([2]mark, [2]vcssim.Comment) {
	h.t.Helper()
	var marks [2]mark
	for i, pr := range prs {
		marks[i] = h.mark(pr)
	}
	var (
		start = make(chan struct{})
		wg    sync.WaitGroup
		errs  [2]error
		dels  [2]vcssim.Delivery
	)
	for i := range prs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			dels[i], errs[i] = h.sim.SendComment(events(replicas[i]), prs[i], author, "atlantis plan")
		}()
	}
	close(start)
	wg.Wait()
	for i := range prs {
		h.checkDelivered(fmt.Sprintf("round %d: plan on #%d to %s", round, prs[i].Number, replicas[i].Name()), dels[i], errs[i])
	}
	var answers [2]vcssim.Comment
	for i, pr := range prs {
		answers[i] = h.waitComment(pr, marks[i], fmt.Sprintf("round %d's plan result", round), isPlanResult)
		h.waitDone(pr, marks[i], "atlantis/plan")
	}
	return marks, answers
}

// oneWinner says whether one of a round's answers is a plan and the other a
// refusal, and which is which (indexes into answers).
func oneWinner(answers [2]vcssim.Comment) (winner, loser int, ok bool) {
	switch {
	case isPlanned(answers[0].Body) && isLockedOut(answers[1].Body):
		return 0, 1, true
	case isPlanned(answers[1].Body) && isLockedOut(answers[0].Body):
		return 1, 0, true
	}
	return 0, 0, false
}

// checkOneWinner checks a round that prs[winner] won: the other pull was told
// who holds the lock, Redis says the same, and each pull got one answer.
func (h *harness) checkOneWinner(round int, prs [2]*vcssim.PullRequest, marks [2]mark, answers [2]vcssim.Comment, winner int) {
	h.t.Helper()
	loser := 1 - winner
	w, l := prs[winner].Number, prs[loser].Number
	Assert(h.t, lockedBy(answers[loser].Body, w), "round %d: #%d was not told that #%d holds the lock:\n%s", round, l, w, answers[loser].Body)
	Equals(h.t, w, h.lockHolder())
	h.checkOneAnswerEach(prs, marks)
}

// checkOneAnswerEach fails unless Atlantis commented exactly once on each
// pull since its mark.
func (h *harness) checkOneAnswerEach(prs [2]*vcssim.PullRequest, marks [2]mark) {
	h.t.Helper()
	for i, pr := range prs {
		Equals(h.t, 1, len(h.botComments(pr, marks[i])))
	}
}

// describeAnswers shows a round's answers, for failure messages.
func describeAnswers(prs [2]*vcssim.PullRequest, replicas [2]*testdrive.Replica, answers [2]vcssim.Comment) string {
	return fmt.Sprintf("#%d on %s: %s\n\n#%d on %s: %s",
		prs[0].Number, replicas[0].Name(), answers[0].Body, prs[1].Number, replicas[1].Name(), answers[1].Body)
}

// lockAttemptGap is how far apart, by the replicas' logs, the winner took
// the lock and the loser was refused it: how close the race really was.
func lockAttemptGap(winner, loser *testdrive.Replica) string {
	won := lastLogTime(winner.Output(), "Acquired lock with id '"+lockName+"'")
	lost := lastLogTime(loser.Output(), "This project is currently locked by an unapplied plan")
	if won.IsZero() || lost.IsZero() {
		return "(unknown)"
	}
	return lost.Sub(won).Abs().String()
}

// lastLogTime is the timestamp of the last log line containing substr.
func lastLogTime(output, substr string) time.Time {
	lines := strings.Split(output, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if !strings.Contains(lines[i], substr) {
			continue
		}
		var entry struct {
			TS time.Time `json:"ts"`
		}
		if start := strings.IndexByte(lines[i], '{'); start >= 0 && json.Unmarshal([]byte(lines[i][start:]), &entry) == nil {
			return entry.TS
		}
	}
	return time.Time{}
}
