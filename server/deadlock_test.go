package server

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/petergtz/pegomock/v4"
	"github.com/runatlantis/atlantis/server/events"
	"github.com/runatlantis/atlantis/server/events/models"
	vcsmocks "github.com/runatlantis/atlantis/server/events/vcs/mocks"
	"github.com/runatlantis/atlantis/server/logging"
	. "github.com/runatlantis/atlantis/testing"
	tally "github.com/uber-go/tally/v4"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/deadlock"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// planFile writes the plan upstream would have left for lock's project in
// the pull's working dir, and returns its path.
func planFile(t *testing.T, dataDir string, lock models.ProjectLock) string {
	t.Helper()
	dir := filepath.Join(dataDir, "repos", lock.Pull.BaseRepo.FullName, strconv.Itoa(lock.Pull.Num), lock.Workspace, lock.Project.Path)
	Ok(t, os.MkdirAll(dir, 0o700))
	path := filepath.Join(dir, lock.Workspace+".tfplan")
	Ok(t, os.WriteFile(path, []byte("plan"), 0o600))
	return path
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// deadlockComments counts, per pull, vcs's comments starting with heading.
func deadlockComments(vcs *vcsmocks.MockClient, heading string) map[int]int {
	_, _, pulls, bodies, _ := vcs.VerifyWasCalled(pegomock.AtLeast(0)).CreateComment(pegomock.Any[logging.SimpleLogging](),
		pegomock.Any[models.Repo](), pegomock.Any[int](), pegomock.Any[string](), pegomock.Any[string]()).GetAllCapturedArguments()
	told := map[int]int{}
	for i, body := range bodies {
		if strings.HasPrefix(body, heading) {
			told[pulls[i]]++
		}
	}
	return told
}

// newDetectingServer is a server with the priority queue on Redis and
// deadlock detection, checking every interval, built with vcs as its VCS
// client.
func newDetectingServer(t *testing.T, resolution string, interval time.Duration) (*Server, *vcsmocks.MockClient, tally.TestScope) {
	t.Helper()
	redisSrv := redistest.Start(t)
	srv, _ := startTestServer(t, testUserConfig(t), queueConfig(redisSrv.Addr))
	Assert(t, srv.deadlocks == nil, "deadlock detection on without its flag")
	vcs := vcsmocks.NewMockClient(pegomock.WithT(t))
	srv.LocksController.VCSClient = vcs
	srv.Config.Features.DeadlockDetection = true
	srv.Config.Features.DeadlockResolution = resolution
	srv.Config.Features.DeadlockCheckInterval = interval
	scope := tally.NewTestScope("", nil)
	var err error
	srv.deadlocks, err = srv.newDeadlockDetection(srv.backend, scope, srv.leases)
	Ok(t, err)
	return srv, vcs, scope
}

// deadlockPair makes pulls a and b deadlock on dirs x and y: a holds x and
// queues for y, b holds y and queues for x, last. It returns b's entry.
func deadlockPair(t *testing.T, srv *Server, a, b int, x, y string) enhanced.EnqueueResult {
	t.Helper()
	lockHeld(t, srv, fixtureLock(x, a, "alice"))
	lockHeld(t, srv, fixtureLock(y, b, "bob"))
	enqueue(t, srv, fixtureLock(y, a, "alice"), enhanced.PriorityNormal)
	time.Sleep(3 * time.Millisecond) // entries record their time to the millisecond
	entry := enqueue(t, srv, fixtureLock(x, b, "bob"), enhanced.PriorityNormal)
	return enhanced.EnqueueResult{Queued: true, Entry: entry}
}

// TestDeadlock_AQueuedPullTriggersACheck: with an interval too long to come,
// a deadlock is found because a pull queued: the queue policy's trigger.
func TestDeadlock_AQueuedPullTriggersACheck(t *testing.T) {
	srv, vcs, _ := newDetectingServer(t, DeadlockResolutionNotify, time.Hour)
	// Found by the check at start, which is then over.
	deadlockPair(t, srv, 1, 2, "a", "b")
	srv.deadlocks.start()
	t.Cleanup(srv.deadlocks.stop)
	waitFor(t, "the deadlock of #1 and #2 to be announced", func() bool {
		return len(deadlockComments(vcs, deadlock.DetectedHeading)) == 2
	})

	res := deadlockPair(t, srv, 3, 4, "c", "d")
	srv.queue.policy.Queued(res)
	waitFor(t, "the deadlock of #3 and #4 to be announced", func() bool {
		return len(deadlockComments(vcs, deadlock.DetectedHeading)) == 4
	})
	Equals(t, map[int]int{1: 1, 2: 1, 3: 1, 4: 1}, deadlockComments(vcs, deadlock.DetectedHeading))
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: timed out", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDeadlock_ReleaseVictimFreesAsUnlockDoes: the server's detector frees a
// victim through upstream's lock deletion, so its plan is discarded, the
// lock passes to the pull waiting for it with a hand-over notice, and every
// pull is told.
func TestDeadlock_ReleaseVictimFreesAsUnlockDoes(t *testing.T) {
	srv, vcs, scope := newDetectingServer(t, DeadlockResolutionReleaseVictim, time.Minute)
	dataDir := srv.LocksController.WorkingDir.(*events.FileWorkspace).DataDir
	a7, b8 := fixtureLock("a", 7, "alice"), fixtureLock("b", 8, "bob")
	deadlockPair(t, srv, 7, 8, "a", "b")
	plan7, plan8 := planFile(t, dataDir, a7), planFile(t, dataDir, b8)

	ctx := context.Background()
	outcomes, err := srv.deadlocks.detector.Check(ctx)
	Ok(t, err)
	Equals(t, 1, len(outcomes))
	Assert(t, outcomes[0].Claimed, "not claimed")
	// Pull 8 queued last: it gives way, and b passes to pull 7.
	Equals(t, enhanced.PullRef{RepoFullName: "org/repo", Num: 8}, *outcomes[0].Victim)
	holder, err := srv.Adapter.GetLock(b8.Project, "default")
	Ok(t, err)
	Assert(t, holder != nil && holder.Pull.Num == 7, "b is held by %v, want pull 7", holder)
	Assert(t, !exists(plan8), "the victim's plan of b was not discarded")
	Assert(t, exists(plan7), "pull 7's plan of a was discarded")
	entries, err := srv.queue.backend.PullEntries(ctx, "org/repo", 8)
	Ok(t, err)
	Equals(t, 0, len(entries))
	notices, err := srv.queue.backend.ClaimNotices(ctx, time.Minute, 10)
	Ok(t, err)
	Equals(t, 1, len(notices))
	Equals(t, 7, notices[0].Entry.Lock.Pull.Num)

	Equals(t, map[int]int{7: 1, 8: 1}, deadlockComments(vcs, deadlock.ResolvedHeading))
	Equals(t, int64(1), scope.Snapshot().Counters()["deadlocks_detected_total+"].Value())
	// The victim's command lease was given back.
	leases, err := srv.leases.Leases(ctx)
	Ok(t, err)
	Equals(t, 0, len(leases))
}
