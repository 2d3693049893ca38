// Package enhancedtest checks that lock backends keep the contract of
// enhanced.Backend, which is upstream Atlantis's lock semantics plus waits.
package enhancedtest

import (
	"context"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// Capabilities says what a backend under test implements, and where it is an
// upstream database whose known behaviour differs from the contract.
type Capabilities struct {
	// Wait is true when TryLockWithTimeout really waits for a release.
	Wait bool
	// SamePullNotAcquired: upstream's databases answer TryLock by the pull
	// already holding the lock with false and that lock, leaving the decision
	// to events.DefaultProjectLocker, which compares pull numbers.
	SamePullNotAcquired bool
	// UnlockByPullMatchesRepoPrefix: upstream's UnlockByPull selects locks by
	// a key prefix of the repo name, so for "org/repo" it also releases that
	// pull number's locks in "org/repo-two".
	UnlockByPullMatchesRepoPrefix bool
}

// Upstream are the capabilities of upstream's BoltDB and Redis databases
// (through LegacyBackend).
var Upstream = Capabilities{SamePullNotAcquired: true, UnlockByPullMatchesRepoPrefix: true}

// Enhanced are the capabilities every enhanced backend must have.
var Enhanced = Capabilities{Wait: true}

type conformanceCase struct {
	name string
	// differs returns why caps' backend is known to behave otherwise, or "".
	differs func(caps Capabilities) string
	run     func(t *testing.T, ctx context.Context, b enhanced.Backend)
}

// RunConformance runs the contract's cases, each against a fresh, empty
// backend from newBackend, which also arranges its cleanup.
func RunConformance(t *testing.T, newBackend func(t *testing.T) enhanced.Backend, caps Capabilities) {
	cases := append(lockCases(), commandCases()...)
	if caps.Wait {
		cases = append(cases, waitCases()...)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.differs != nil {
				if why := c.differs(caps); why != "" {
					t.Skip("known upstream difference: " + why)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c.run(t, ctx, newBackend(t))
		})
	}
}

const repo = "org/repo"

func lockCases() []conformanceCase {
	return []conformanceCase{
		{
			name: "free lock is acquired",
			run: func(t *testing.T, ctx context.Context, b enhanced.Backend) {
				lock := NewLock(repo, ".", "default", "", 1)
				acquired, curr, err := b.TryLock(ctx, Request(lock))
				Ok(t, err)
				Assert(t, acquired, "free lock not acquired")
				EqualLocks(t, lock, curr)
				got, err := b.GetLock(ctx, lock.Project, lock.Workspace)
				Ok(t, err)
				Assert(t, got != nil, "lock not stored")
				EqualLocks(t, lock, *got)
			},
		},
		{
			name: "lock held by another pull is refused with its holder",
			run: func(t *testing.T, ctx context.Context, b enhanced.Backend) {
				holder := NewLock(repo, "dir", "default", "", 1)
				mustLock(t, ctx, b, holder)
				acquired, curr, err := b.TryLock(ctx, Request(NewLock(repo, "dir", "default", "", 2)))
				Ok(t, err)
				Assert(t, !acquired, "lock granted to a second pull")
				EqualLocks(t, holder, curr)
			},
		},
		{
			name: "same pull locking again holds the lock it has",
			differs: func(c Capabilities) string {
				if c.SamePullNotAcquired {
					return "upstream reports false and leaves same-pull re-locks to DefaultProjectLocker"
				}
				return ""
			},
			run: func(t *testing.T, ctx context.Context, b enhanced.Backend) {
				first := NewLock(repo, "dir", "default", "", 7)
				mustLock(t, ctx, b, first)
				again := NewLock(repo, "dir", "default", "", 7)
				again.User.Username = "someone-else"
				acquired, curr, err := b.TryLock(ctx, Request(again))
				Ok(t, err)
				Assert(t, acquired, "same pull refused its own lock")
				EqualLocks(t, first, curr)
			},
		},
		{
			name: "same pull number in another repo is another pull",
			run: func(t *testing.T, ctx context.Context, b enhanced.Backend) {
				holder := NewLock(repo, "dir", "default", "", 7)
				mustLock(t, ctx, b, holder)
				other := holder
				other.Pull.BaseRepo.FullName = "org/fork"
				acquired, _, err := b.TryLock(ctx, Request(other))
				Ok(t, err)
				// Upstream's databases never grant a held lock, and ours
				// compare the pull's repo as well as its number.
				Assert(t, !acquired, "lock granted to a pull of another repo with the same number")
			},
		},
		{
			name: "locks are per repo, path, workspace and project",
			run: func(t *testing.T, ctx context.Context, b enhanced.Backend) {
				mustLock(t, ctx, b, NewLock(repo, "dir", "default", "proj", 1))
				for _, other := range []models.ProjectLock{
					NewLock("org/other", "dir", "default", "proj", 2),
					NewLock(repo, "dir/sub", "default", "proj", 2),
					NewLock(repo, "dir", "staging", "proj", 2),
					NewLock(repo, "dir", "default", "proj2", 2),
					NewLock(repo, "dir", "default", "", 2),
				} {
					acquired, _, err := b.TryLock(ctx, Request(other))
					Ok(t, err)
					Assert(t, acquired, "lock %s blocked by another project's lock", models.GenerateLockKey(other.Project, other.Workspace))
				}
			},
		},
		{
			name: "unlock returns the released lock and frees it",
			run: func(t *testing.T, ctx context.Context, b enhanced.Backend) {
				lock := NewLock(repo, "dir", "default", "", 1)
				mustLock(t, ctx, b, lock)
				released, err := b.Unlock(ctx, lock.Project, lock.Workspace)
				Ok(t, err)
				Assert(t, released != nil, "unlock returned no lock")
				EqualLocks(t, lock, *released)
				got, err := b.GetLock(ctx, lock.Project, lock.Workspace)
				Ok(t, err)
				Assert(t, got == nil, "lock still held after unlock: %+v", got)
				mustLock(t, ctx, b, NewLock(repo, "dir", "default", "", 2))
			},
		},
		{
			name: "unlock of a free lock returns nil",
			run: func(t *testing.T, ctx context.Context, b enhanced.Backend) {
				lock := NewLock(repo, "dir", "default", "", 1)
				released, err := b.Unlock(ctx, lock.Project, lock.Workspace)
				Ok(t, err)
				Assert(t, released == nil, "unlock of a free lock returned %+v", released)
			},
		},
		{
			name: "unlock if owned by pull releases only for the holder",
			run: func(t *testing.T, ctx context.Context, b enhanced.Backend) {
				lock := NewLock(repo, "dir", "default", "", 1)
				mustLock(t, ctx, b, lock)
				released, err := b.UnlockIfOwnedByPull(ctx, lock.Project, lock.Workspace, 2)
				Ok(t, err)
				Assert(t, released == nil, "pull 2 released pull 1's lock")
				got, err := b.GetLock(ctx, lock.Project, lock.Workspace)
				Ok(t, err)
				Assert(t, got != nil, "lock gone after a non-owner's unlock")

				released, err = b.UnlockIfOwnedByPull(ctx, lock.Project, lock.Workspace, 1)
				Ok(t, err)
				Assert(t, released != nil, "owner could not release its lock")
				EqualLocks(t, lock, *released)
				got, err = b.GetLock(ctx, lock.Project, lock.Workspace)
				Ok(t, err)
				Assert(t, got == nil, "lock still held after its owner's unlock")
			},
		},
		{
			name: "get lock of a free lock is nil",
			run: func(t *testing.T, ctx context.Context, b enhanced.Backend) {
				got, err := b.GetLock(ctx, models.Project{RepoFullName: repo, Path: "."}, "default")
				Ok(t, err)
				Assert(t, got == nil, "free lock read as %+v", got)
			},
		},
		{
			name: "list returns every lock",
			run: func(t *testing.T, ctx context.Context, b enhanced.Backend) {
				locks, err := b.List(ctx)
				Ok(t, err)
				Equals(t, 0, len(locks))
				want := []models.ProjectLock{
					NewLock(repo, ".", "default", "", 1),
					NewLock(repo, "modules/vpc", "default", "vpc", 2),
					NewLock("org/other", ".", "prod", "", 1),
				}
				for _, l := range want {
					mustLock(t, ctx, b, l)
				}
				locks, err = b.List(ctx)
				Ok(t, err)
				EqualLockSets(t, want, locks)

				_, err = b.Unlock(ctx, want[1].Project, want[1].Workspace)
				Ok(t, err)
				locks, err = b.List(ctx)
				Ok(t, err)
				EqualLockSets(t, []models.ProjectLock{want[0], want[2]}, locks)
			},
		},
		{
			name: "unlock by pull releases that pull's locks only",
			run: func(t *testing.T, ctx context.Context, b enhanced.Backend) {
				mine := []models.ProjectLock{
					NewLock(repo, ".", "default", "", 1),
					NewLock(repo, "modules/vpc", "staging", "vpc", 1),
				}
				others := []models.ProjectLock{
					NewLock(repo, "other", "default", "", 2),
					NewLock("org/another", ".", "default", "", 1),
				}
				for _, l := range append(append([]models.ProjectLock{}, mine...), others...) {
					mustLock(t, ctx, b, l)
				}
				released, err := b.UnlockByPull(ctx, repo, 1)
				Ok(t, err)
				EqualLockSets(t, mine, released)
				left, err := b.List(ctx)
				Ok(t, err)
				EqualLockSets(t, others, left)
			},
		},
		{
			name: "unlock by pull does not touch a repo whose name it prefixes",
			differs: func(c Capabilities) string {
				if c.UnlockByPullMatchesRepoPrefix {
					return "upstream selects locks by a key prefix of the repo name"
				}
				return ""
			},
			run: func(t *testing.T, ctx context.Context, b enhanced.Backend) {
				mine := NewLock(repo, ".", "default", "", 1)
				sibling := NewLock(repo+"-two", ".", "default", "", 1)
				mustLock(t, ctx, b, mine)
				mustLock(t, ctx, b, sibling)
				released, err := b.UnlockByPull(ctx, repo, 1)
				Ok(t, err)
				EqualLockSets(t, []models.ProjectLock{mine}, released)
				left, err := b.List(ctx)
				Ok(t, err)
				EqualLockSets(t, []models.ProjectLock{sibling}, left)
			},
		},
		{
			name: "unlock by pull leaves a lock another pull took since",
			run: func(t *testing.T, ctx context.Context, b enhanced.Backend) {
				first := NewLock(repo, "dir", "default", "", 1)
				mustLock(t, ctx, b, first)
				_, err := b.Unlock(ctx, first.Project, first.Workspace)
				Ok(t, err)
				second := NewLock(repo, "dir", "default", "", 2)
				mustLock(t, ctx, b, second)
				released, err := b.UnlockByPull(ctx, repo, 1)
				Ok(t, err)
				Equals(t, 0, len(released))
				got, err := b.GetLock(ctx, second.Project, second.Workspace)
				Ok(t, err)
				Assert(t, got != nil, "another pull's lock released")
				EqualLocks(t, second, *got)
			},
		},
		{
			name: "unlock by pull without locks returns none",
			run: func(t *testing.T, ctx context.Context, b enhanced.Backend) {
				released, err := b.UnlockByPull(ctx, repo, 42)
				Ok(t, err)
				Equals(t, 0, len(released))
			},
		},
		{
			name: "odd names round-trip",
			run: func(t *testing.T, ctx context.Context, b enhanced.Backend) {
				const oddRepo = "grüppe/sub group/ré{po}"
				want := []models.ProjectLock{
					NewLock(oddRepo, "dir with space/ü", "default", "", 3),
					NewLock(oddRepo, "{x}/a::b", "ws{1}::}", "naïve {p}", 3),
					NewLock(oddRepo, "}{", "{}", "}", 3),
					NewLock(oddRepo, "日本/路径", "工作区", "プロジェクト", 3),
				}
				for _, l := range want {
					mustLock(t, ctx, b, l)
					got, err := b.GetLock(ctx, l.Project, l.Workspace)
					Ok(t, err)
					Assert(t, got != nil, "lock %q not found", models.GenerateLockKey(l.Project, l.Workspace))
					EqualLocks(t, l, *got)
				}
				locks, err := b.List(ctx)
				Ok(t, err)
				EqualLockSets(t, want, locks)
				released, err := b.UnlockByPull(ctx, oddRepo, 3)
				Ok(t, err)
				EqualLockSets(t, want, released)
				locks, err = b.List(ctx)
				Ok(t, err)
				Equals(t, 0, len(locks))
			},
		},
		{
			name: "try lock with timeout on a free lock acquires at once",
			run: func(t *testing.T, ctx context.Context, b enhanced.Backend) {
				lock := NewLock(repo, "dir", "default", "", 1)
				start := time.Now()
				acquired, curr, err := b.TryLockWithTimeout(ctx, Request(lock), 5*time.Second)
				Ok(t, err)
				Assert(t, acquired, "free lock not acquired")
				Assert(t, time.Since(start) < 2*time.Second, "free lock took %s", time.Since(start))
				EqualLocks(t, lock, curr)
			},
		},
		{
			name: "ping",
			run: func(t *testing.T, ctx context.Context, b enhanced.Backend) {
				Ok(t, b.Ping(ctx))
			},
		},
	}
}

func mustLock(t testing.TB, ctx context.Context, b enhanced.Backend, lock models.ProjectLock) {
	t.Helper()
	acquired, curr, err := b.TryLock(ctx, Request(lock))
	Ok(t, err)
	Assert(t, acquired, "lock %s held by pull %d", models.GenerateLockKey(lock.Project, lock.Workspace), curr.Pull.Num)
}
