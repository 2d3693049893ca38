package enhancedtest

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// NewLock returns pull pullNum's lock on a project, filled in as Atlantis
// fills it in.
func NewLock(repo, path, workspace, projectName string, pullNum int) models.ProjectLock {
	return models.ProjectLock{
		Project: models.Project{RepoFullName: repo, Path: path, ProjectName: projectName},
		Pull: models.PullRequest{
			Num:        pullNum,
			HeadCommit: "5e2a3c1d",
			URL:        "https://github.example.com/" + repo + "/pull",
			HeadBranch: "feature",
			BaseBranch: "main",
			Author:     "author",
			State:      models.OpenPullState,
			BaseRepo:   models.Repo{FullName: repo, VCSHost: models.VCSHost{Hostname: "github.com", Type: models.Github}},
		},
		User:      models.User{Username: "user"},
		Workspace: workspace,
		Time:      time.Now(),
	}
}

// Request wraps a lock in a normal-priority request.
func Request(lock models.ProjectLock) enhanced.LockRequest {
	return enhanced.LockRequest{Lock: lock}
}

// TestAgingStep is the aging step of the requests RequestWithPriority makes:
// long beside any test, so levels keep their order.
const TestAgingStep = time.Hour

// RequestWithPriority wraps a lock in a request of priority p.
func RequestWithPriority(lock models.ProjectLock, p enhanced.Priority) enhanced.LockRequest {
	return enhanced.LockRequest{Lock: lock, Priority: p, Headstart: p.Headstart(TestAgingStep)}
}

// normalize drops what a round trip through storage legitimately changes:
// the time's location and monotonic reading.
func normalize(l models.ProjectLock) models.ProjectLock {
	l.Time = l.Time.UTC().Round(0)
	return l
}

// EqualLocks fails unless want and got are the same lock.
func EqualLocks(t testing.TB, want, got models.ProjectLock) {
	t.Helper()
	Equals(t, normalize(want), normalize(got))
}

// EqualLockSets fails unless want and got hold the same locks in any order.
func EqualLockSets(t testing.TB, want, got []models.ProjectLock) {
	t.Helper()
	Equals(t, sortedLocks(want), sortedLocks(got))
}

func sortedLocks(locks []models.ProjectLock) []models.ProjectLock {
	out := make([]models.ProjectLock, 0, len(locks))
	for _, l := range locks {
		out = append(out, normalize(l))
	}
	sort.Slice(out, func(i, j int) bool {
		return models.GenerateLockKey(out[i].Project, out[i].Workspace) < models.GenerateLockKey(out[j].Project, out[j].Workspace)
	})
	return out
}

// queueLengther is implemented by backends that can say how many requests
// wait for a lock; the suite uses it to line waiters up in a known order.
type queueLengther interface {
	QueueLength(ctx context.Context, project models.Project, workspace string) (int, error)
}

// AwaitQueue returns once n requests wait for lock. A backend that cannot
// tell gets a fixed pause instead.
func AwaitQueue(t testing.TB, b enhanced.Backend, lock models.ProjectLock, n int) {
	t.Helper()
	q, ok := b.(queueLengther)
	if !ok {
		time.Sleep(200 * time.Millisecond)
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := q.QueueLength(context.Background(), lock.Project, lock.Workspace)
		Ok(t, err)
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d requests waiting for %s, want %d", got, models.GenerateLockKey(lock.Project, lock.Workspace), n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
