package testdrive

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
)

const (
	repoOwner = "acme"
	repoName  = "infra"
	repoFull  = repoOwner + "/" + repoName
	project   = "network"
	// raceProject is the project the race plays on, so that the race starts
	// from a free lock while the story's queue on project stays up.
	raceProject = "dns"
)

// story is the state the story's acts share: where to narrate, the GitHub
// stand-in and its repo, the replicas, and Redis, which the story reads to
// report who holds a lock from the lock itself rather than from a replica.
type story struct {
	ctx    context.Context
	out    io.Writer
	sim    *vcssim.Sim
	repo   *vcssim.Repo
	r1, r2 *Replica
	redis  *redis.Client
}

func (s *story) say(format string, args ...any) { fmt.Fprintf(s.out, "\n--- "+format+"\n", args...) }
func (s *story) saw(format string, args ...any) { fmt.Fprintf(s.out, "    "+format+"\n", args...) }

// tellStory plays teams' pull requests on one repo across two replicas,
// narrating what Atlantis does and why: a lock shared by the fleet, the
// queue that hands it on, priorities, and a race. It returns the pull
// requests it left open, in the order to close them.
func tellStory(ctx context.Context, out io.Writer, sim *vcssim.Sim, redisAddr string, raceRounds int, r1, r2 *Replica) ([]*vcssim.PullRequest, error) {
	files := mergeFiles(
		vcssim.InDir(project, vcssim.TerraformProject("vpc")),
		vcssim.InDir(raceProject, vcssim.TerraformProject("zone")),
	)
	repo, err := sim.CreateRepo(repoOwner, repoName, files)
	if err != nil {
		return nil, err
	}
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rdb.Close() // nolint: errcheck
	s := &story{ctx: ctx, out: out, sim: sim, repo: repo, r1: r1, r2: r2, redis: rdb}

	pr2, err := s.queueAndHandOver()
	if err != nil {
		return nil, err
	}
	pr3, pr4, err := s.criticalFirst(pr2)
	if err != nil {
		return nil, err
	}
	racers, err := s.race(raceRounds)
	if err != nil {
		return nil, err
	}
	if err := s.leaveQueue(pr4, pr3); err != nil {
		return nil, err
	}
	// PR #3 before PR #4: closing PR #4 first would hand PR #3 the lock and
	// its plan on the way out. Closing the racers, which hold nothing, drops
	// their pull status from Redis.
	return []*vcssim.PullRequest{pr3, pr4, racers[0], racers[1]}, nil
}

// queueAndHandOver is the first act: PR #1 locks the project, PR #2 on the
// other replica is refused and queued, and PR #1's merge hands the lock to
// PR #2, which is planned with nobody commenting. It returns PR #2, holding
// the lock.
func (s *story) queueAndHandOver() (*vcssim.PullRequest, error) {
	lock := lockName(project)
	s.say("Team Platform opens PR #1 changing %s/; GitHub's webhook lands on %s", project, s.r1.Name())
	pr1, err := s.open(s.r1, 1, "platform/vpc", project, "platform-team")
	if err != nil {
		return nil, err
	}
	if _, err := s.waitComment(pr1, commentMark{}, "the autoplan", isPlan); err != nil {
		return nil, err
	}
	s.saw("Atlantis planned PR #1 and locked %s for it.", lock)
	if err := waitFor(s.ctx, "the lock on replica 2", func() (bool, error) {
		holders, err := lockHolders(s.ctx, s.r2)
		return holders[lock] == "#1", err
	}); err != nil {
		return nil, err
	}
	s.saw("%s sees the same lock: it lives in Redis, not in one replica.", s.r2.Name())

	s.say("Team Payments opens PR #2 on the same project; its webhook lands on %s", s.r2.Name())
	pr2, err := s.open(s.r2, 2, "payments/vpc", project, "payments-team")
	if err != nil {
		return nil, err
	}
	body, err := s.waitComment(pr2, commentMark{}, "the lock message", isLocked)
	if err != nil {
		return nil, err
	}
	s.saw("PR #2 was refused: %q", firstLine(body))
	s.saw("Upstream's Redis database reads then writes, so two replicas could both have granted it; this one cannot.")
	if err := s.showPosition(pr2, commentMark{}, "was queued"); err != nil {
		return nil, err
	}

	s.say("Team Platform comments `atlantis apply` on PR #1; this time the webhook lands on %s", s.r2.Name())
	if _, err := s.sim.SendComment(s.r2.URL+"/events", pr1, "platform-team", "atlantis apply"); err != nil {
		return nil, err
	}
	if _, err := s.waitComment(pr1, commentMark{}, "the apply", isApply); err != nil {
		return nil, err
	}
	s.saw("%s applied the plan %s made: they share the data dir and the lock.", s.r2.Name(), s.r1.Name())

	s.say("PR #1 is merged; %s releases its lock, which passes to the head of its queue", s.r1.Name())
	mark := s.mark(pr2)
	if _, err := s.sim.SendPullRequestClosed(s.r1.URL+"/events", pr1, true); err != nil {
		return nil, err
	}
	if err := s.showHandOver(pr2, mark, project); err != nil {
		return nil, err
	}
	s.saw("PR #2 now holds the lock and has its plan.")
	return pr2, nil
}

// leaveQueue narrates what the story leaves for the queue page to show:
// holder holding the project's lock and queued waiting for it.
func (s *story) leaveQueue(holder, queued *vcssim.PullRequest) error {
	lock := lockName(project)
	queues, err := queueStatus(s.ctx, s.r2)
	if err != nil {
		return err
	}
	q := queues[lock]
	s.say("The story leaves PR #%d holding %s and PR #%d waiting for it", holder.Number, lock, queued.Number)
	s.saw("%s's %s: held by #%d; queue: %s.", s.r2.Name(), queueStatusPath, q.holder(), describeQueue(q))
	s.saw("The queue page shows the same on either replica.")
	return nil
}

// open opens pull request number on branch, adding a resource named after
// the branch to dir, and sends its "opened" webhook to r, which autoplans
// it. Each pull adds a file of its own, so any of them merges cleanly.
func (s *story) open(r *Replica, number int, branch, dir, author string) (*vcssim.PullRequest, error) {
	pr, err := s.sim.OpenPullRequest(s.repo, number, branch, changeIn(dir, branch), author)
	if err != nil {
		return nil, err
	}
	if _, err := s.sim.SendPullRequestOpened(r.URL+"/events", pr); err != nil {
		return nil, err
	}
	return pr, nil
}

// showPosition waits for the queue position comment pr gets after mark and
// narrates it: "PR #N <news>: position ...".
func (s *story) showPosition(pr *vcssim.PullRequest, mark commentMark, news string) error {
	body, err := s.waitComment(pr, mark, "the queue position comment", isPosition)
	if err != nil {
		return err
	}
	places := parsePositions(body)
	if len(places) == 0 {
		return fmt.Errorf("PR #%d's position comment lists no project:\n%s", pr.Number, body)
	}
	for _, p := range places {
		s.saw("PR #%d %s: position %s for %s, locked by %s, priority %s.", pr.Number, news, p.position, p.project, p.holder, p.priority)
	}
	return nil
}

// showHandOver waits for the hand-over of dir's lock to pr after mark: the
// comment, then the plan nobody asked for, and which replica ran it.
func (s *story) showHandOver(pr *vcssim.PullRequest, mark commentMark, dir string) error {
	body, err := s.waitComment(pr, mark, "the hand-over comment", isHandOver)
	if err != nil {
		return err
	}
	s.saw("PR #%d was told: %q", pr.Number, firstLine(body))
	if _, err := s.waitComment(pr, mark, "the re-plan", isPlan); err != nil {
		return err
	}
	planner := s.plannedBy(pr, mark.at)
	s.saw("A plan comment appeared on PR #%d with nobody commenting: %s re-planned it (its plan status links to that replica).", pr.Number, planner)
	holder, err := s.redisHolder(dir)
	if err != nil {
		return err
	}
	s.saw("Redis says %s holds %s.", holder, lockName(dir))
	if holder != fmt.Sprintf("#%d", pr.Number) {
		return fmt.Errorf("PR #%d was handed the lock of %s, but Redis says %s holds it", pr.Number, dir, holder)
	}
	return nil
}

// plannedBy names the replica whose plan status on pr's head commit since
// the given time links to it: upstream points a project's status at the
// job page of the replica that runs the plan.
func (s *story) plannedBy(pr *vcssim.PullRequest, since time.Time) string {
	statuses := s.sim.Statuses(repoFull, pr.HeadSHA)
	for i := len(statuses) - 1; i >= 0; i-- {
		st := statuses[i]
		if st.CreatedAt.Before(since) || !isPlanStatus(st) {
			continue
		}
		for _, r := range []*Replica{s.r1, s.r2} {
			if hasURLPrefix(st.TargetURL, r.URL) {
				return r.Name()
			}
		}
	}
	return "a replica (its plan status names none)"
}

// commentMark is where a pull's history stood: comments after it are new.
type commentMark struct {
	id int64
	at time.Time
}

// mark is where pr's comments stand now.
func (s *story) mark(pr *vcssim.PullRequest) commentMark {
	m := commentMark{at: time.Now().UTC()}
	for _, c := range s.sim.Comments(repoFull, pr.Number) {
		m.id = max(m.id, c.ID)
	}
	return m
}

// waitComment waits for a comment on pr after mark that match accepts and
// returns its body.
func (s *story) waitComment(pr *vcssim.PullRequest, mark commentMark, what string, match func(string) bool) (string, error) {
	ctx, cancel := context.WithTimeout(s.ctx, 3*time.Minute)
	defer cancel()
	c, err := s.sim.WaitForComment(ctx, repoFull, pr.Number, func(c vcssim.Comment) bool {
		return c.ID > mark.id && match(c.Body)
	})
	if err != nil {
		return "", fmt.Errorf("waiting for %s on PR #%d: %w", what, pr.Number, err)
	}
	return c.Body, nil
}

// lockName is the name /api/locks and the story give dir's lock.
func lockName(dir string) string { return repoFull + "/" + dir + "/default" }

// changeIn is a pull's change: a file of its own in dir, with a resource
// named after branch.
func changeIn(dir, branch string) map[string]string {
	name := ""
	for _, r := range branch {
		if r == '/' || r == '-' {
			r = '_'
		}
		name += string(r)
	}
	return map[string]string{
		dir + "/" + name + ".tf": fmt.Sprintf("resource \"terraform_data\" %q {\n  input = %q\n}\n", name, branch),
	}
}

func mergeFiles(sets ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, set := range sets {
		for name, content := range set {
			out[name] = content
		}
	}
	return out
}
