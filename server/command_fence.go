package server

import (
	"fmt"

	upstream "github.com/runatlantis/atlantis/server"
	"github.com/runatlantis/atlantis/server/events"
	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/vcs"
	"github.com/runatlantis/atlantis/server/logging"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// installCommandFence is the third seam between upstream and enhanced
// locking, beside installLockingAdapter and installCommandRunner.
//
// A command whose pull's lease ran out on this replica (it was paused, or
// cut off from Redis, past the lease's deadline) must change nothing more for
// the pull: the adapter refuses its lock and pull status writes, and this
// seam refuses everything else a command does outside the lock database,
// at the narrowest place upstream's server exposes:
//   - the VCS client proxy every component holds (srv.LocksController's):
//     its value is replaced by one that refuses the pull's comments, commit
//     statuses, reactions, review dismissals and merges;
//   - the project command runner's step runners (reached through the cancel
//     command runner, which holds the same *events.DefaultProjectCommandRunner
//     as plan and apply): each workflow step, which starts Terraform or a
//     shell, is refused;
//   - the working directory of that runner, of the project command builder
//     and of the workflow hooks: git runs, deletions and plan removals are
//     refused;
//   - the pre- and post-workflow hook runners;
//   - upstream's Redis database, whose pull status writes the plan and apply
//     runners make directly (fencePullStatus).
//
// What no seam reaches: a process that was already running (stopped by the
// pullStopper as the lease runs out), and upstream's Go code between two
// refused calls (it only reads, or writes what the refused calls would
// carry out). Closing a pull is never fenced: its executor keeps upstream's
// own working directory and its locks are always freed.
// TestSeamTypes fails if an upstream upgrade changes these types.
func installCommandFence(srv *upstream.Server, userConfig upstream.UserConfig, fence enhanced.PullFence, logger logging.SimpleLogging) error {
	f := pullFence{fence: fence, logger: logger}
	proxy, ok := srv.LocksController.VCSClient.(*vcs.ClientProxy)
	if !ok {
		return unsupportedUpstream(fmt.Sprintf("upstream's VCS client is a %T, not *vcs.ClientProxy", srv.LocksController.VCSClient))
	}
	cancel, ok := srv.CommandRunner.CommentCommandRunnerByCmd[command.Cancel].(*events.CancelCommandRunner)
	if !ok {
		return unsupportedUpstream("upstream's cancel command runner is not an *events.CancelCommandRunner")
	}
	runner, ok := cancel.ProjectCmdRunner.(*events.DefaultProjectCommandRunner)
	if !ok {
		return unsupportedUpstream(fmt.Sprintf("upstream's project command runner is a %T, not *events.DefaultProjectCommandRunner", cancel.ProjectCmdRunner))
	}
	instrumented, ok := srv.APIController.ProjectCommandBuilder.(*events.InstrumentedProjectCommandBuilder)
	if !ok {
		return unsupportedUpstream(fmt.Sprintf("upstream's project command builder is a %T, not *events.InstrumentedProjectCommandBuilder", srv.APIController.ProjectCommandBuilder))
	}
	builder, ok := instrumented.ProjectCommandBuilder.(*events.DefaultProjectCommandBuilder)
	if !ok {
		return unsupportedUpstream(fmt.Sprintf("upstream's project command builder wraps a %T, not *events.DefaultProjectCommandBuilder", instrumented.ProjectCommandBuilder))
	}
	// Copied before the proxy's value is replaced: the fenced client
	// forwards to the original routing.
	original := new(vcs.ClientProxy)
	*original = *proxy
	client := &fencedVCSClient{Client: original, fence: f}
	*proxy = *vcs.NewClientProxy(client, client, client, client, client, client)

	fenceSteps(runner, f)
	runner.WorkingDir = &fencedWorkingDir{WorkingDir: runner.WorkingDir, fence: f}
	builder.WorkingDir = &fencedWorkingDir{WorkingDir: builder.WorkingDir, fence: f}
	hooks := srv.PreWorkflowHooksCommandRunner
	hooks.WorkingDir = &fencedWorkingDir{WorkingDir: hooks.WorkingDir, fence: f}
	hooks.PreWorkflowHookRunner = fencedHook{next: hooks.PreWorkflowHookRunner, what: "run a pre-workflow hook", fence: f}
	post := srv.PostWorkflowHooksCommandRunner
	post.WorkingDir = &fencedWorkingDir{WorkingDir: post.WorkingDir, fence: f}
	post.PostWorkflowHookRunner = fencedHook{next: post.PostWorkflowHookRunner, what: "run a post-workflow hook", fence: f}
	return fencePullStatus(srv.LocksController.Database, userConfig, f)
}

func unsupportedUpstream(what string) error {
	return fmt.Errorf("%s: this upstream version is not supported by enhanced locking; start with --enhanced-locking-enabled=false", what)
}

// pullFence refuses to act for a pull while this replica's command for it
// holds a lease that ran out.
type pullFence struct {
	fence  enhanced.PullFence
	logger logging.SimpleLogging
}

// check returns the refusal of what for the pull, or nil when it may go on.
func (f pullFence) check(what, repoFullName string, pullNum int) error {
	err := f.fence.Check(repoFullName, pullNum)
	if err == nil {
		return nil
	}
	f.logger.Warn("enhanced locking: refused to %s for %s#%d: %s", what, repoFullName, pullNum, err)
	return fmt.Errorf("enhanced locking refused to %s for %s#%d: %w", what, repoFullName, pullNum, err)
}
