package server

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	upstream "github.com/runatlantis/atlantis/server"
	"github.com/runatlantis/atlantis/server/core/db/mocks"
	"github.com/runatlantis/atlantis/server/core/locking"
	"github.com/runatlantis/atlantis/server/events"
	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"
	"go.uber.org/mock/gomock"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/queue"
)

func testUserConfig(t testing.TB) upstream.UserConfig {
	return upstream.UserConfig{
		DataDir:        t.TempDir(),
		AtlantisURL:    "http://127.0.0.1:4141",
		LockingDBType:  "boltdb",
		GithubHostname: "github.com",
		GithubUser:     "bot",
		AllowCommands:  "version,plan,apply,unlock,approve_policies",
		APISecret:      "api-secret",
	}
}

func testConfig() upstream.Config {
	return upstream.Config{AtlantisVersion: "test"}
}

// TestSeamTypes fails when an upstream upgrade changes what the seam relies
// on: the concrete types behind upstream's Locker and ApplyLocker.
func TestSeamTypes(t *testing.T) {
	srv, err := upstream.NewServer(testUserConfig(t), testConfig())
	Ok(t, err)
	_, ok := srv.Locker.(*locking.Client)
	Assert(t, ok, "SEAM BROKEN: upstream Server.Locker is %T, not *locking.Client; installLockingAdapter must be rewritten for this upstream version", srv.Locker)
	_, ok = srv.ApplyLocker.(*locking.ApplyClient)
	Assert(t, ok, "SEAM BROKEN: upstream Server.ApplyLocker is %T, not *locking.ApplyClient; installLockingAdapter must be rewritten for this upstream version", srv.ApplyLocker)
	_, ok = locking.NewApplyClient(nil, false, false).(*locking.ApplyClient)
	Assert(t, ok, "SEAM BROKEN: locking.NewApplyClient no longer returns *locking.ApplyClient")
	Assert(t, srv.LocksController.Database != nil, "SEAM BROKEN: LocksController.Database no longer exposes the legacy database")
	Assert(t, srv.VCSEventsController != nil && srv.VCSEventsController.CommandRunner != nil,
		"SEAM BROKEN: VCSEventsController.CommandRunner no longer carries the webhook commands; installCommandRunner must be rewritten for this upstream version")
	var _ events.CommandRunner = srv.VCSEventsController.CommandRunner
	Assert(t, srv.LocksController.VCSClient != nil, "SEAM BROKEN: LocksController.VCSClient no longer exposes the VCS client the queue comments through")
	deleteLock, ok := srv.LocksController.DeleteLockCommand.(*events.DefaultDeleteLockCommand)
	Assert(t, ok && deleteLock.Locker != nil && deleteLock.WorkingDir != nil,
		"SEAM BROKEN: LocksController.DeleteLockCommand is %T, not a *events.DefaultDeleteLockCommand with its Locker and WorkingDir; victimReleaser must be rewritten for this upstream version",
		srv.LocksController.DeleteLockCommand)
	Ok(t, installCommandFence(srv, testUserConfig(t), fencedPull(0), nil))
}

// TestSeam_UpstreamComponentsUseTheInstalledDatabase locks through upstream's
// own controllers and clients and checks every call reached the database put
// in by the seam, not the one upstream built.
func TestSeam_UpstreamComponentsUseTheInstalledDatabase(t *testing.T) {
	userConfig := testUserConfig(t)
	srv, err := upstream.NewServer(userConfig, testConfig())
	Ok(t, err)
	ctrl := gomock.NewController(t)
	database := mocks.NewMockDatabase(ctrl)
	Ok(t, installLockingAdapter(srv, database, userConfig))
	srv.SetupRoutes()

	project := models.NewProject("org/repo", "dir", "")
	lock := models.ProjectLock{Project: project, Workspace: "default", Pull: models.PullRequest{Num: 7}}
	database.EXPECT().TryLock(gomock.Any()).Return(true, lock, nil)
	database.EXPECT().List().Return([]models.ProjectLock{lock}, nil)
	database.EXPECT().LockCommand(command.Apply, gomock.Any()).Return(&command.Lock{CommandName: command.Apply, LockMetadata: command.LockMetadata{UnixTime: time.Now().Unix()}}, nil)
	database.EXPECT().UnlockCommand(command.Apply).Return(nil)
	database.EXPECT().Unlock(project, "default").Return(&lock, nil)

	resp, err := srv.Locker.TryLock(project, "default", lock.Pull, models.User{Username: "alice"})
	Ok(t, err)
	Assert(t, resp.LockAcquired, "lock not acquired through the installed database")

	serve := func(method, path string) int {
		req := httptest.NewRequest(method, path, nil)
		req.Header.Set("X-Atlantis-Token", "api-secret")
		rec := httptest.NewRecorder()
		srv.Router.ServeHTTP(rec, req)
		return rec.Code
	}
	Equals(t, http.StatusOK, serve("GET", "/api/locks"))
	Equals(t, http.StatusOK, serve("POST", "/apply/lock"))
	Equals(t, http.StatusOK, serve("DELETE", "/apply/unlock"))
	Equals(t, http.StatusOK, serve("DELETE", "/locks?id=org%252Frepo%252Fdir%252Fdefault%252F"))
}

// TestDisabled_BehavesLikeUpstream runs the same lock calls against upstream's
// server and ours with enhanced locking off and compares every answer.
func TestDisabled_BehavesLikeUpstream(t *testing.T) {
	up, err := upstream.NewServer(testUserConfig(t), testConfig())
	Ok(t, err)
	ours, err := NewServer(testUserConfig(t), testConfig(), DefaultEnhancedLockingConfig())
	Ok(t, err)
	Assert(t, ours.Adapter == nil, "no adapter expected while disabled")

	project := models.NewProject("org/repo", "dir", "")
	other := models.NewProject("org/repo", "other", "")
	pull1 := models.PullRequest{Num: 1, BaseRepo: models.Repo{FullName: "org/repo"}}
	pull2 := models.PullRequest{Num: 2, BaseRepo: models.Repo{FullName: "org/repo"}}
	user := models.User{Username: "alice"}

	type step func(l locking.Locker, a locking.ApplyLocker) any
	steps := []step{
		func(l locking.Locker, _ locking.ApplyLocker) any {
			r, err := l.TryLock(project, "default", pull1, user)
			return []any{r.LockAcquired, r.CurrLock.Pull.Num, r.LockKey, err}
		},
		func(l locking.Locker, _ locking.ApplyLocker) any {
			r, err := l.TryLock(project, "default", pull2, user)
			return []any{r.LockAcquired, r.CurrLock.Pull.Num, r.LockKey, err}
		},
		func(l locking.Locker, _ locking.ApplyLocker) any {
			r, err := l.TryLock(other, "staging", pull2, user)
			return []any{r.LockAcquired, r.CurrLock.Pull.Num, err}
		},
		func(l locking.Locker, _ locking.ApplyLocker) any {
			locks, err := l.List()
			keys := []string{}
			for k, v := range locks {
				keys = append(keys, k+"="+v.Pull.BaseRepo.FullName)
			}
			return []any{len(keys), err}
		},
		func(l locking.Locker, _ locking.ApplyLocker) any {
			lock, err := l.UnlockIfOwnedByPull(project, "default", 2)
			return []any{lock == nil, err}
		},
		func(l locking.Locker, _ locking.ApplyLocker) any {
			locks, err := l.UnlockByPull("org/repo", 2)
			return []any{len(locks), err}
		},
		func(l locking.Locker, _ locking.ApplyLocker) any {
			lock, err := l.GetLock("org/repo/dir/default/")
			return []any{lock != nil && lock.Pull.Num == 1, err}
		},
		func(l locking.Locker, _ locking.ApplyLocker) any {
			lock, err := l.Unlock("org/repo/dir/default/")
			return []any{lock != nil && lock.Pull.Num == 1, err}
		},
		func(l locking.Locker, _ locking.ApplyLocker) any {
			_, err := l.Unlock("not-a-key")
			return err.Error()
		},
		func(_ locking.Locker, a locking.ApplyLocker) any {
			r, err := a.LockApply()
			return []any{r.Locked, err}
		},
		func(_ locking.Locker, a locking.ApplyLocker) any {
			r, err := a.CheckApplyLock()
			return []any{r.Locked, r.GlobalApplyLockEnabled, err}
		},
		func(_ locking.Locker, a locking.ApplyLocker) any {
			err := a.UnlockApply()
			r, _ := a.CheckApplyLock()
			return []any{r.Locked, err}
		},
	}
	for i, s := range steps {
		Equals(t, s(up.Locker, up.ApplyLocker), s(ours.Locker, ours.ApplyLocker))
		_ = i
	}
}

func TestHealthz(t *testing.T) {
	cases := []struct {
		description string
		cfg         EnhancedLockingConfig
		exp         EnhancedLockingHealth
	}{
		{"disabled", DefaultEnhancedLockingConfig(),
			EnhancedLockingHealth{Enabled: false, Backend: "legacy", Status: "disabled", ActiveBackend: "legacy"}},
		{"boltdb", func() EnhancedLockingConfig {
			c := DefaultEnhancedLockingConfig()
			c.Enabled = true
			return c
		}(), EnhancedLockingHealth{Enabled: true, Backend: "boltdb", Status: "healthy", ActiveBackend: "boltdb"}},
	}
	for _, c := range cases {
		t.Run(c.description, func(t *testing.T) {
			srv, err := NewServer(testUserConfig(t), testConfig(), c.cfg)
			Ok(t, err)
			srv.registerRoutes()
			srv.SetupRoutes()
			rec := httptest.NewRecorder()
			srv.Router.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
			Equals(t, http.StatusOK, rec.Code)
			var body HealthzResponse
			Ok(t, json.Unmarshal(rec.Body.Bytes(), &body))
			Equals(t, "ok", body.Status)
			Equals(t, c.exp, body.EnhancedLocking)
		})
	}
}

// queueingSeenBy stands for upstream's command runner: it records whether
// the queue policy would queue the pull's requests while each command runs.
type queueingSeenBy struct {
	policy *queue.Policy
	seen   []bool
}

func (r *queueingSeenBy) observe(repo models.Repo, pullNum int) {
	r.seen = append(r.seen, r.policy.ShouldQueue(models.ProjectLock{Pull: models.PullRequest{Num: pullNum, BaseRepo: repo}}))
}

func (r *queueingSeenBy) RunCommentCommand(baseRepo models.Repo, _ *models.Repo, _ *models.PullRequest, _ models.User, pullNum int, _ *events.CommentCommand) {
	r.observe(baseRepo, pullNum)
}

func (r *queueingSeenBy) RunAutoplanCommand(baseRepo models.Repo, _ models.Repo, pull models.PullRequest, _ models.User) {
	r.observe(baseRepo, pull.Num)
}

// TestSeam_CommandRunnerTellsTheQueueWhoPlans: every command a webhook asks
// for passes the wrapper, which marks the pull as planning for exactly as
// long as a plan runs.
func TestSeam_CommandRunnerTellsTheQueueWhoPlans(t *testing.T) {
	srv, err := upstream.NewServer(testUserConfig(t), testConfig())
	Ok(t, err)
	policy := queue.NewPolicy(queue.DefaultRules(), time.Hour, nil)
	upstreamRunner := &queueingSeenBy{policy: policy}
	srv.VCSEventsController.CommandRunner = upstreamRunner
	runner, err := installCommandRunner(srv, newTestLeasedRunner(t, backends.NewMemoryCommandLeases(), nil, time.Minute), policy)
	Ok(t, err)
	Assert(t, srv.VCSEventsController.CommandRunner == runner, "the events controller does not call the wrapper")

	repo := models.Repo{FullName: "org/repo"}
	runner.RunCommentCommand(repo, nil, nil, models.User{}, 7, &events.CommentCommand{Name: command.Plan})
	runner.RunCommentCommand(repo, nil, nil, models.User{}, 7, &events.CommentCommand{Name: command.Apply})
	runner.RunAutoplanCommand(repo, repo, models.PullRequest{Num: 7, BaseRepo: repo}, models.User{})
	runner.RunCommentCommand(repo, nil, nil, models.User{}, 7, nil)
	Equals(t, []bool{true, false, true, false}, upstreamRunner.seen)
	Assert(t, !policy.ShouldQueue(models.ProjectLock{Pull: models.PullRequest{Num: 7, BaseRepo: repo}}), "still planning after the commands returned")
}
