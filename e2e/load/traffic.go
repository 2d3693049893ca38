package load

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"time"

	"github.com/runatlantis/atlantis/server/core/locking"
	"github.com/runatlantis/atlantis/server/events/models"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// The traffic: pulls of one repository plan, unlock and close at random, as
// webhooks reaching any replica would. A tenth of the projects take a third
// of the requests, so their queues grow.
const (
	repoName  = "acme/infra"
	workspace = "default"

	planShare        = 0.45 // `atlantis plan` on one project: TryLock
	unlockOwnedShare = 0.25 // an apply or `atlantis unlock` by the holder: UnlockIfOwnedByPull
	unlockShare      = 0.10 // the locks page's unlock: Unlock, whoever holds it
	// The rest closes a pull: UnlockByPull.

	hotShare = 0.3
)

// priorityRules rank pulls by their head branch, the one pattern that tells
// the pulls queued for one lock apart.
const priorityRules = `aging_step: 1h
default: normal
rules:
  - head_branch: "critical/**"
    priority: critical
  - head_branch: "hotfix/**"
    priority: high
  - head_branch: "chore/**"
    priority: low
`

// agingStep is priorityRules' aging step, which ranks entries for the checker.
const agingStep = time.Hour

// headBranch gives a few pulls in a hundred each priority above and below
// normal.
func headBranch(pull int) string {
	switch pull % 100 {
	case 0:
		return fmt.Sprintf("critical/%d", pull)
	case 1, 2, 3, 4, 5:
		return fmt.Sprintf("hotfix/%d", pull)
	case 6, 7, 8, 9, 10:
		return fmt.Sprintf("chore/%d", pull)
	}
	return fmt.Sprintf("feature/%d", pull)
}

var repo = models.Repo{FullName: repoName, Owner: "acme", Name: "infra", VCSHost: models.VCSHost{Hostname: "github.com", Type: models.Github}}

func pullRequest(num int) models.PullRequest {
	return models.PullRequest{Num: num, BaseRepo: repo, HeadBranch: headBranch(num), BaseBranch: "main", Author: "load", State: models.OpenPullState}
}

func project(path string) models.Project {
	return models.NewProject(repoName, path, "")
}

// traffic sends one process's requests through upstream's locking client,
// whose database is the stack under test, and records each.
type traffic struct {
	locks *locking.Client
	// track, where requests may queue, says a plan of the pull runs until
	// the returned function is called, as the server's command runner does.
	track    func(repo models.Repo, pull int, plan bool) (done func())
	rec      *recorder
	pulls    int
	projects int
}

// run sends requests back to back until the monotonic clock reaches until.
func (t *traffic) run(rng *rand.Rand, until int64) {
	for monoNow() < until {
		pull := 1 + rng.IntN(t.pulls)
		path := t.project(rng)
		switch x := rng.Float64(); {
		case x < planShare:
			t.plan(kindPlan, pullRequest(pull), path)
		case x < planShare+unlockOwnedShare:
			t.unlockHolder(path)
		case x < planShare+unlockOwnedShare+unlockShare:
			t.unlock(path)
		default:
			t.close(pull)
		}
	}
}

func (t *traffic) project(rng *rand.Rand) string {
	n := rng.IntN(t.projects)
	if rng.Float64() < hotShare {
		n = rng.IntN(max(1, t.projects/10))
	}
	return fmt.Sprintf("p%03d", n)
}

// plan takes the lock for pull, as upstream's project locker does: the lock
// is the pull's when it was acquired or the pull already held it.
func (t *traffic) plan(kind string, pull models.PullRequest, path string) error {
	if t.track != nil {
		defer t.track(pull.BaseRepo, pull.Num, true)()
	}
	r := record{Kind: kind, Pull: pull.Num, Key: path, Start: monoNow()}
	res, err := t.locks.TryLock(project(path), workspace, pull, models.User{Username: "load"})
	r.End = monoNow()
	r.Acquired = err == nil && (res.LockAcquired || res.CurrLock.Pull.Num == pull.Num)
	t.rec.add(withErr(r, err))
	return err
}

// unlockHolder releases the lock for the pull holding it, as an apply or
// `atlantis unlock` on that pull does.
func (t *traffic) unlockHolder(path string) {
	lock, err := t.locks.GetLock(models.GenerateLockKey(project(path), workspace))
	if err != nil || lock == nil {
		return
	}
	r := record{Kind: kindUnlockOwned, Pull: lock.Pull.Num, Key: path, Start: monoNow()}
	released, err := t.locks.UnlockIfOwnedByPull(project(path), workspace, lock.Pull.Num)
	r.End = monoNow()
	r.Holder = pullOf(released)
	t.rec.add(withErr(r, err))
}

func (t *traffic) unlock(path string) {
	r := record{Kind: kindUnlock, Key: path, Start: monoNow()}
	released, err := t.locks.Unlock(models.GenerateLockKey(project(path), workspace))
	r.End = monoNow()
	r.Holder = pullOf(released)
	t.rec.add(withErr(r, err))
}

func (t *traffic) close(pull int) {
	r := record{Kind: kindClose, Pull: pull, Start: monoNow()}
	released, err := t.locks.UnlockByPull(repoName, pull)
	r.End = monoNow()
	for _, l := range released {
		r.Keys = append(r.Keys, l.Project.Path)
	}
	t.rec.add(withErr(r, err))
}

func pullOf(lock *models.ProjectLock) int {
	if lock == nil {
		return 0
	}
	return lock.Pull.Num
}

// withErr records err, and whether the operation may still take effect.
func withErr(r record, err error) record {
	if err == nil {
		return r
	}
	r.Err = err.Error()
	var netErr net.Error
	r.Unknown = errors.Is(err, enhanced.ErrOutcomeUnknown) || errors.Is(err, context.DeadlineExceeded) ||
		(errors.As(err, &netErr) && netErr.Timeout())
	return r
}
