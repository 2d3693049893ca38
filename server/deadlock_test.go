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

// TestDeadlock_ReleaseVictimFreesAsUnlockDoes: the server's detector frees a
// victim through upstream's lock deletion, so its plan is discarded, the
// lock passes to the pull waiting for it with a hand-over notice, and every
// pull is told.
func TestDeadlock_ReleaseVictimFreesAsUnlockDoes(t *testing.T) {
	userConfig := testUserConfig(t)
	redisSrv := redistest.Start(t)
	srv, _ := startTestServer(t, userConfig, queueConfig(redisSrv.Addr))
	Assert(t, srv.deadlocks == nil, "deadlock detection on without its flag")
	vcs := vcsmocks.NewMockClient(pegomock.WithT(t))
	srv.LocksController.VCSClient = vcs
	srv.Config.Features.DeadlockDetection = true
	srv.Config.Features.DeadlockResolution = DeadlockResolutionReleaseVictim
	scope := tally.NewTestScope("", nil)
	detection, err := srv.newDeadlockDetection(srv.backend, scope, srv.leases)
	Ok(t, err)

	a7, b8 := fixtureLock("a", 7, "alice"), fixtureLock("b", 8, "bob")
	lockHeld(t, srv, a7)
	lockHeld(t, srv, b8)
	plan7, plan8 := planFile(t, userConfig.DataDir, a7), planFile(t, userConfig.DataDir, b8)
	enqueue(t, srv, fixtureLock("b", 7, "alice"), enhanced.PriorityNormal)
	time.Sleep(3 * time.Millisecond) // entries record their time to the millisecond
	enqueue(t, srv, fixtureLock("a", 8, "bob"), enhanced.PriorityNormal)

	ctx := context.Background()
	outcomes, err := detection.detector.Check(ctx)
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

	_, _, pulls, bodies, _ := vcs.VerifyWasCalled(pegomock.AtLeast(0)).CreateComment(pegomock.Any[logging.SimpleLogging](),
		pegomock.Any[models.Repo](), pegomock.Any[int](), pegomock.Any[string](), pegomock.Any[string]()).GetAllCapturedArguments()
	told := map[int]int{}
	for i, body := range bodies {
		if strings.HasPrefix(body, deadlock.ResolvedHeading) {
			told[pulls[i]]++
		}
	}
	Equals(t, map[int]int{7: 1, 8: 1}, told)
	Equals(t, int64(1), scope.Snapshot().Counters()["deadlocks_detected_total+"].Value())
	// The victim's command lease was given back.
	leases, err := srv.leases.Leases(ctx)
	Ok(t, err)
	Equals(t, 0, len(leases))
}
