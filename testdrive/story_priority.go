package testdrive

import (
	"fmt"

	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
)

// hotfixBranches is the head branch pattern the testdrive's rules file makes
// critical.
const hotfixBranches = "hotfix/**"

// criticalFirst is the second act: with holder holding the project, a normal
// pull queues, then a critical one (a hotfix branch, by the rules file)
// queues after it and goes to the head of the line; when holder is applied
// and merged, the critical pull gets the lock first. It returns the pulls it
// left open: the normal one, still queued, and the critical one, holding
// the lock.
func (s *story) criticalFirst(holder *vcssim.PullRequest) (queued, critical *vcssim.PullRequest, err error) {
	lock := lockName(project)
	s.say("Team Data opens PR #3 on %s/ from data/peering, a normal change; its webhook lands on %s", project, s.r1.Name())
	pr3, err := s.open(s.r1, 3, "data/peering", project, "data-team")
	if err != nil {
		return nil, nil, err
	}
	if err := s.showPosition(pr3, commentMark{}, "was queued"); err != nil {
		return nil, nil, err
	}

	s.say("An incident: Team SRE opens PR #4 from hotfix/vpc-routes; the rules file makes %s critical; its webhook lands on %s", hotfixBranches, s.r2.Name())
	passed := s.mark(pr3)
	pr4, err := s.open(s.r2, 4, "hotfix/vpc-routes", project, "sre-team")
	if err != nil {
		return nil, nil, err
	}
	if err := s.showPosition(pr4, commentMark{}, "was queued"); err != nil {
		return nil, nil, err
	}
	if err := s.showPosition(pr3, passed, "was told it moved back"); err != nil {
		return nil, nil, err
	}
	queues, err := queueStatus(s.ctx, s.r1)
	if err != nil {
		return nil, nil, err
	}
	s.saw("%s's %s lists the queue of %s: %s.", s.r1.Name(), queueStatusPath, lock, describeQueue(queues[lock]))
	if q := queues[lock]; len(q.Queue) != 2 || q.Queue[0].PullNumber != pr4.Number {
		return nil, nil, fmt.Errorf("want PR #4 ahead of PR #3 in the queue of %s, got %s", lock, describeQueue(q))
	}

	s.say("Team Payments applies PR #%d (on %s) and merges it (on %s)", holder.Number, s.r1.Name(), s.r2.Name())
	if _, err := s.sim.SendComment(s.r1.URL+"/events", holder, "payments-team", "atlantis apply"); err != nil {
		return nil, nil, err
	}
	if _, err := s.waitComment(holder, s.mark(holder), "the apply", isApply); err != nil {
		return nil, nil, err
	}
	mark3, mark4 := s.mark(pr3), s.mark(pr4)
	if _, err := s.sim.SendPullRequestClosed(s.r2.URL+"/events", holder, true); err != nil {
		return nil, nil, err
	}
	if err := s.showHandOver(pr4, mark4, project); err != nil {
		return nil, nil, err
	}
	if err := s.showPosition(pr3, mark3, "is next"); err != nil {
		return nil, nil, err
	}
	s.saw("The critical PR #4 got the lock first, though PR #3 had queued before it.")
	return pr3, pr4, nil
}
