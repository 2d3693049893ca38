package testdrive

import (
	"fmt"
	"sync"

	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
)

// raceTally is what the rounds of the race came to, counted from what
// Atlantis and Redis say, not assumed.
type raceTally struct {
	rounds int
	// doubleGrants are rounds in which both pulls were given a plan: the
	// lock granted twice.
	doubleGrants int
	// queuedLosers are rounds whose refused pull was in the lock's queue
	// behind the winner when its refusal came.
	queuedLosers int
	// noWinner are rounds in which neither pull planned.
	noWinner int
	// redisDisagreed are rounds with one plan whose pull Redis did not name
	// as the holder.
	redisDisagreed int
	// wins counts the rounds each pull won alone, by pull number.
	wins map[int]int
}

// race is the third act: two pulls comment `atlantis plan` on one project
// at the same instant, one on each replica, rounds times, unlocking both
// between rounds. It narrates the tally and returns the two pulls, open,
// holding nothing.
func (s *story) race(rounds int) ([2]*vcssim.PullRequest, error) {
	lock := lockName(raceProject)
	s.say("A race: PRs #5 and #6 both change %s/; %d times, both comment `atlantis plan` at the same instant, one on each replica", raceProject, rounds)
	var prs [2]*vcssim.PullRequest
	for i, branch := range []string{"race/alpha", "race/beta"} {
		// No "opened" webhook: nothing autoplans and takes the lock before
		// the race.
		pr, err := s.sim.OpenPullRequest(s.repo, 5+i, branch, changeIn(raceProject, branch), "race-team")
		if err != nil {
			return prs, err
		}
		prs[i] = pr
	}
	tally := raceTally{rounds: rounds, wins: map[int]int{}}
	for round := 1; round <= rounds; round++ {
		// Each pull uses each replica in turn.
		replicas := [2]*Replica{s.r1, s.r2}
		if round%2 == 0 {
			replicas = [2]*Replica{s.r2, s.r1}
		}
		if err := s.raceRound(round, prs, replicas, &tally); err != nil {
			return prs, err
		}
	}
	s.saw("PR #%d won %d rounds, PR #%d won %d.", prs[0].Number, tally.wins[prs[0].Number], prs[1].Number, tally.wins[prs[1].Number])
	s.saw("Rounds that granted the lock twice: %d of %d (by the pulls' plan comments).", tally.doubleGrants, tally.rounds)
	s.saw("Rounds that queued the loser behind the winner: %d of %d (by %s).", tally.queuedLosers, tally.rounds, queueStatusPath)
	if tally.noWinner > 0 {
		s.saw("Rounds in which neither pull planned: %d (see the replicas' log).", tally.noWinner)
	}
	s.saw("Rounds in which Redis named another holder than the pull that planned: %d.", tally.redisDisagreed)
	s.saw("%s is free again.", lock)
	return prs, nil
}

// raceRound plays one round: prs[i] comments `atlantis plan` through
// replicas[i], both at once; the answers and the state of Redis and the
// queue are counted into tally; then both pulls unlock, the loser first, so
// that the winner's release hands the lock to nobody.
func (s *story) raceRound(round int, prs [2]*vcssim.PullRequest, replicas [2]*Replica, tally *raceTally) error {
	lock := lockName(raceProject)
	marks := [2]commentMark{s.mark(prs[0]), s.mark(prs[1])}
	if err := s.planAtOnce(prs, replicas); err != nil {
		return fmt.Errorf("round %d: %w", round, err)
	}
	var planned [2]bool
	for i, pr := range prs {
		body, err := s.waitComment(pr, marks[i], fmt.Sprintf("round %d's plan result", round), isPlanResult)
		if err != nil {
			return err
		}
		planned[i] = isPlan(body)
	}
	holder, err := s.redisHolder(raceProject)
	if err != nil {
		return err
	}
	queues, err := queueStatus(s.ctx, s.r1)
	if err != nil {
		return err
	}
	switch {
	case planned[0] && planned[1]:
		tally.doubleGrants++
		s.saw("round %d: both #%d and #%d planned: the lock was granted twice (Redis names %s)", round, prs[0].Number, prs[1].Number, holder)
	case !planned[0] && !planned[1]:
		tally.noWinner++
		s.saw("round %d: neither #%d nor #%d planned (Redis names %s)", round, prs[0].Number, prs[1].Number, holder)
	default:
		winner := 0
		if planned[1] {
			winner = 1
		}
		loser := prs[1-winner]
		tally.wins[prs[winner].Number]++
		if holder != fmt.Sprintf("#%d", prs[winner].Number) {
			tally.redisDisagreed++
		}
		q := queues[lock]
		if len(q.Queue) > 0 && q.Queue[0].PullNumber == loser.Number && q.holder() == prs[winner].Number {
			tally.queuedLosers++
			// Its command ends with the position comment; unlocking
			// before would race it.
			if _, err := s.waitComment(loser, marks[1-winner], "the loser's position comment", isPosition); err != nil {
				return err
			}
		}
	}
	return s.unlockBoth(round, prs, replicas, planned)
}

// planAtOnce sends both `atlantis plan` webhooks at the same instant.
func (s *story) planAtOnce(prs [2]*vcssim.PullRequest, replicas [2]*Replica) error {
	var (
		start = make(chan struct{})
		wg    sync.WaitGroup
		errs  [2]error
	)
	for i := range prs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, errs[i] = s.sim.SendComment(replicas[i].URL+"/events", prs[i], "race-team", "atlantis plan")
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return fmt.Errorf("sending PR #%d's plan to %s: %w", prs[i].Number, replicas[i].Name(), err)
		}
	}
	return nil
}

// unlockBoth comments `atlantis unlock` on the pull that did not plan, then
// on the other, and waits until the lock is free with nobody queued.
func (s *story) unlockBoth(round int, prs [2]*vcssim.PullRequest, replicas [2]*Replica, planned [2]bool) error {
	order := []int{0, 1}
	if !planned[1] {
		order = []int{1, 0}
	}
	for _, i := range order {
		m := s.mark(prs[i])
		if _, err := s.sim.SendComment(replicas[i].URL+"/events", prs[i], "race-team", "atlantis unlock"); err != nil {
			return err
		}
		if _, err := s.waitComment(prs[i], m, fmt.Sprintf("round %d's unlock", round), isUnlocked); err != nil {
			return err
		}
	}
	lock := lockName(raceProject)
	return waitFor(s.ctx, fmt.Sprintf("round %d's reset of %s", round, lock), func() (bool, error) {
		holder, err := s.redisHolder(raceProject)
		if err != nil {
			return false, err
		}
		queues, err := queueStatus(s.ctx, s.r1)
		return holder == "nobody" && len(queues[lock].Queue) == 0, err
	})
}
