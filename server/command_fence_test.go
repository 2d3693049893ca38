package server

import (
	"context"
	"errors"
	"net"
	"os"
	"strconv"
	"testing"

	upstream "github.com/runatlantis/atlantis/server"
	upstreamredis "github.com/runatlantis/atlantis/server/core/redis"
	"github.com/runatlantis/atlantis/server/events"
	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/events/vcs"
	"github.com/runatlantis/atlantis/server/logging"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

var errLeaseRanOut = errors.New("lease ran out")

// fencedPull fences one pull, as the command lease manager does while a
// command of the pull whose lease ran out still runs here.
type fencedPull int

func (f fencedPull) Check(_ string, pullNum int) error {
	if pullNum == int(f) {
		return errLeaseRanOut
	}
	return nil
}

// Every place the fence is installed is reached through the references
// upstream's own components hold, so what a command does goes through it.
func TestCommandFence_RefusesEveryActOfAFencedPull(t *testing.T) {
	srv, err := upstream.NewServer(testUserConfig(t), testConfig())
	Ok(t, err)
	logger := logging.NewNoopLogger(t)
	// The VCS hosts' clients upstream built are replaced by one that records
	// the calls that reach it, beneath the fence.
	reached := &recordingVCS{}
	proxy := srv.LocksController.VCSClient.(*vcs.ClientProxy)
	*proxy = *vcs.NewClientProxy(reached, reached, reached, reached, reached, reached)
	Ok(t, installCommandFence(srv, testUserConfig(t), fencedPull(7), logger))

	repo := models.Repo{FullName: "org/repo", VCSHost: models.VCSHost{Type: models.Github}}
	fenced := models.PullRequest{Num: 7, BaseRepo: repo}
	free := models.PullRequest{Num: 8, BaseRepo: repo}
	vcsClient := srv.CommandRunner.VCSClient
	for name, call := range map[string]func(models.PullRequest) error{
		"comment": func(p models.PullRequest) error { return vcsClient.CreateComment(logger, repo, p.Num, "body", "plan") },
		"hide": func(p models.PullRequest) error {
			return vcsClient.HidePrevCommandComments(logger, repo, p.Num, "plan", "")
		},
		"react": func(p models.PullRequest) error { return vcsClient.ReactToComment(logger, repo, p.Num, 1, "eyes") },
		"status": func(p models.PullRequest) error {
			return vcsClient.UpdateStatus(logger, repo, p, models.SuccessCommitStatus, "atlantis/plan", "", "")
		},
		"dismiss": func(p models.PullRequest) error { return vcsClient.DiscardReviews(logger, repo, p) },
		"merge":   func(p models.PullRequest) error { return vcsClient.MergePull(logger, p, models.PullRequestOptions{}) },
	} {
		Assert(t, errors.Is(call(fenced), errLeaseRanOut), "%s: a fenced pull's VCS write went through", name)
		Ok(t, call(free))
	}
	Equals(t, []int{8, 8, 8, 8, 8, 8}, reached.pulls)

	cancel, ok := srv.CommandRunner.CommentCommandRunnerByCmd[command.Cancel].(*events.CancelCommandRunner)
	Assert(t, ok, "no cancel command runner")
	runner, ok := cancel.ProjectCmdRunner.(*events.DefaultProjectCommandRunner)
	Assert(t, ok, "no project command runner")
	dir := t.TempDir()
	ctx := command.ProjectContext{Pull: fenced, BaseRepo: repo, HeadRepo: repo, Log: logger, Workspace: "default"}
	steps := map[string]func() error{
		"run": func() error {
			_, err := runner.RunStepRunner.Run(ctx, nil, "touch ran", dir, nil, false, nil, nil)
			return err
		},
		"env": func() error {
			_, err := runner.EnvStepRunner.Run(ctx, nil, "touch ran", "", dir, nil)
			return err
		},
		"multienv": func() error {
			_, err := runner.MultiEnvStepRunner.Run(ctx, nil, "touch ran", dir, nil, nil)
			return err
		},
		"pre-workflow hook": func() error {
			_, _, err := srv.PreWorkflowHooksCommandRunner.PreWorkflowHookRunner.Run(models.WorkflowHookCommandContext{Pull: fenced, BaseRepo: repo, Log: logger}, "touch ran", "sh", "-c", dir)
			return err
		},
		"post-workflow hook": func() error {
			_, _, err := srv.PostWorkflowHooksCommandRunner.PostWorkflowHookRunner.Run(models.WorkflowHookCommandContext{Pull: fenced, BaseRepo: repo, Log: logger}, "touch ran", "sh", "-c", dir)
			return err
		},
	}
	for name, step := range map[string]events.StepRunner{
		"init": runner.InitStepRunner, "plan": runner.PlanStepRunner, "show": runner.ShowStepRunner, "apply": runner.ApplyStepRunner,
		"policy_check": runner.PolicyCheckStepRunner, "version": runner.VersionStepRunner, "import": runner.ImportStepRunner, "state_rm": runner.StateRmStepRunner,
	} {
		steps[name] = func() error {
			_, err := step.Run(ctx, nil, dir, nil)
			return err
		}
	}
	builder := srv.APIController.ProjectCommandBuilder.(*events.InstrumentedProjectCommandBuilder).ProjectCommandBuilder.(*events.DefaultProjectCommandBuilder)
	for name, wd := range map[string]events.WorkingDir{
		"runner": runner.WorkingDir, "builder": builder.WorkingDir,
		"pre-workflow hooks": srv.PreWorkflowHooksCommandRunner.WorkingDir, "post-workflow hooks": srv.PostWorkflowHooksCommandRunner.WorkingDir,
	} {
		steps["clone of the "+name] = func() error {
			_, err := wd.Clone(logger, repo, fenced, "default")
			return err
		}
		steps["deletion of the "+name] = func() error { return wd.Delete(logger, repo, fenced) }
	}
	for name, step := range steps {
		Assert(t, errors.Is(step(), errLeaseRanOut), "%s of a fenced pull was not refused", name)
	}
	entries, err := os.ReadDir(dir)
	Ok(t, err)
	Equals(t, 0, len(entries))
}

// recordingVCS is a VCS host's client that records which pull each write
// was for.
type recordingVCS struct {
	vcs.Client
	pulls []int
}

func (r *recordingVCS) CreateComment(_ logging.SimpleLogging, _ models.Repo, pullNum int, _ string, _ string) error {
	r.pulls = append(r.pulls, pullNum)
	return nil
}

func (r *recordingVCS) HidePrevCommandComments(_ logging.SimpleLogging, _ models.Repo, pullNum int, _ string, _ string) error {
	r.pulls = append(r.pulls, pullNum)
	return nil
}

func (r *recordingVCS) ReactToComment(_ logging.SimpleLogging, _ models.Repo, pullNum int, _ int64, _ string) error {
	r.pulls = append(r.pulls, pullNum)
	return nil
}

func (r *recordingVCS) UpdateStatus(_ logging.SimpleLogging, _ models.Repo, pull models.PullRequest, _ models.CommitStatus, _, _, _ string) error {
	r.pulls = append(r.pulls, pull.Num)
	return nil
}

func (r *recordingVCS) DiscardReviews(_ logging.SimpleLogging, _ models.Repo, pull models.PullRequest) error {
	r.pulls = append(r.pulls, pull.Num)
	return nil
}

func (r *recordingVCS) MergePull(_ logging.SimpleLogging, pull models.PullRequest, _ models.PullRequestOptions) error {
	r.pulls = append(r.pulls, pull.Num)
	return nil
}

// Upstream's Redis database refuses a fenced pull's status writes, which its
// plan and apply runners make without going through the adapter.
func TestFencePullStatus_RefusesAFencedPullsStatusWrites(t *testing.T) {
	srv := redistest.Start(t)
	host, portText, err := net.SplitHostPort(srv.Addr)
	Ok(t, err)
	port, err := strconv.Atoi(portText)
	Ok(t, err)
	database, err := upstreamredis.New(host, port, "", false, false, 0)
	Ok(t, err)
	defer database.Close() // nolint: errcheck
	userConfig := testUserConfig(t)
	userConfig.RedisHost, userConfig.RedisPort = host, port
	Ok(t, fencePullStatus(database, userConfig, pullFence{fence: fencedPull(7), logger: logging.NewNoopLogger(t)}))

	repo := models.Repo{FullName: "org/repo", VCSHost: models.VCSHost{Hostname: "github.com", Type: models.Github}}
	results := []command.ProjectResult{{RepoRelDir: "dir", Workspace: "default", Command: command.Plan, ProjectCommandOutput: command.ProjectCommandOutput{Error: errors.New("plan failed")}}}
	_, err = database.UpdatePullWithResults(models.PullRequest{Num: 8, BaseRepo: repo}, results)
	Ok(t, err)
	_, err = database.UpdatePullWithResults(models.PullRequest{Num: 7, BaseRepo: repo}, results)
	Assert(t, errors.Is(err, errLeaseRanOut), "a fenced pull's status was written: %v", err)
	keys, err := srv.Client(t).Keys(context.Background(), "*::org/repo::*").Result()
	Ok(t, err)
	Equals(t, []string{"github.com::org/repo::8"}, keys)

	// The status another replica wrote for the pull stays as it was.
	other, err := upstreamredis.New(host, port, "", false, false, 0)
	Ok(t, err)
	defer other.Close() // nolint: errcheck
	written, err := other.UpdatePullWithResults(models.PullRequest{Num: 7, BaseRepo: repo}, results)
	Ok(t, err)
	err = database.UpdateProjectStatus(models.PullRequest{Num: 7, BaseRepo: repo}, "default", "dir", models.AppliedPlanStatus)
	Assert(t, errors.Is(err, errLeaseRanOut), "a fenced pull's project status was written: %v", err)
	Assert(t, errors.Is(database.DeletePullStatus(models.PullRequest{Num: 7, BaseRepo: repo}), errLeaseRanOut), "a fenced pull's status was deleted")
	status, err := other.GetPullStatus(models.PullRequest{Num: 7, BaseRepo: repo})
	Ok(t, err)
	Equals(t, written, *status)
	Ok(t, database.DeletePullStatus(models.PullRequest{Num: 8, BaseRepo: repo}))
}

func TestParsePullStatusKey(t *testing.T) {
	for key, want := range map[string]struct {
		repo string
		num  int
		ok   bool
	}{
		"github.com::org/repo::7":         {"org/repo", 7, true},
		"gitlab.example.com::g/sub/r::12": {"g/sub/r", 12, true},
		"pr/org/repo/dir/default/":        {},
		"github.com::org/repo::x":         {},
		"a::b":                            {},
	} {
		repo, num, ok := parsePullStatusKey(key)
		Equals(t, want.repo, repo)
		Equals(t, want.num, num)
		Equals(t, want.ok, ok)
	}
}
