package server

import (
	"regexp"

	"github.com/runatlantis/atlantis/server/core/config/valid"
	"github.com/runatlantis/atlantis/server/events"
	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"
)

// fenceSteps puts the fence in front of each of the runner's step runners:
// every workflow step starts Terraform or a shell in the pull's checkout.
func fenceSteps(r *events.DefaultProjectCommandRunner, f pullFence) {
	for _, step := range []*events.StepRunner{
		&r.InitStepRunner, &r.PlanStepRunner, &r.ShowStepRunner, &r.ApplyStepRunner, &r.CancelStepRunner,
		&r.PolicyCheckStepRunner, &r.VersionStepRunner, &r.ImportStepRunner, &r.StateRmStepRunner,
	} {
		if *step != nil {
			*step = fencedStep{next: *step, fence: f}
		}
	}
	if r.RunStepRunner != nil {
		r.RunStepRunner = fencedRunStep{next: r.RunStepRunner, fence: f}
	}
	if r.EnvStepRunner != nil {
		r.EnvStepRunner = fencedEnvStep{next: r.EnvStepRunner, fence: f}
	}
	if r.MultiEnvStepRunner != nil {
		r.MultiEnvStepRunner = fencedMultiEnvStep{next: r.MultiEnvStepRunner, fence: f}
	}
}

func checkStep(f pullFence, ctx command.ProjectContext) error {
	return f.check("run a workflow step", ctx.Pull.BaseRepo.FullName, ctx.Pull.Num)
}

type fencedStep struct {
	next  events.StepRunner
	fence pullFence
}

func (s fencedStep) Run(ctx command.ProjectContext, extraArgs []string, path string, envs map[string]string) (string, error) {
	if err := checkStep(s.fence, ctx); err != nil {
		return "", err
	}
	return s.next.Run(ctx, extraArgs, path, envs)
}

type fencedRunStep struct {
	next  events.CustomStepRunner
	fence pullFence
}

func (s fencedRunStep) Run(ctx command.ProjectContext, shell *valid.CommandShell, cmd string, path string, envs map[string]string, streamOutput bool,
	postProcessOutput []valid.PostProcessRunOutputOption, postProcessFilterRegexes []*regexp.Regexp) (string, error) {
	if err := checkStep(s.fence, ctx); err != nil {
		return "", err
	}
	return s.next.Run(ctx, shell, cmd, path, envs, streamOutput, postProcessOutput, postProcessFilterRegexes)
}

type fencedEnvStep struct {
	next  events.EnvStepRunner
	fence pullFence
}

func (s fencedEnvStep) Run(ctx command.ProjectContext, shell *valid.CommandShell, cmd string, value string, path string, envs map[string]string) (string, error) {
	if err := checkStep(s.fence, ctx); err != nil {
		return "", err
	}
	return s.next.Run(ctx, shell, cmd, value, path, envs)
}

type fencedMultiEnvStep struct {
	next  events.MultiEnvStepRunner
	fence pullFence
}

func (s fencedMultiEnvStep) Run(ctx command.ProjectContext, shell *valid.CommandShell, cmd string, path string, envs map[string]string,
	postProcessOutput []valid.PostProcessRunOutputOption) (string, error) {
	if err := checkStep(s.fence, ctx); err != nil {
		return "", err
	}
	return s.next.Run(ctx, shell, cmd, path, envs, postProcessOutput)
}

// fencedHook runs a pre- or post-workflow hook, whose runners share one
// method.
type fencedHook struct {
	next interface {
		Run(ctx models.WorkflowHookCommandContext, command, shell, shellArgs, path string) (string, string, error)
	}
	what  string
	fence pullFence
}

func (h fencedHook) Run(ctx models.WorkflowHookCommandContext, command, shell, shellArgs, path string) (string, string, error) {
	if err := h.fence.check(h.what, ctx.Pull.BaseRepo.FullName, ctx.Pull.Num); err != nil {
		return "", "", err
	}
	return h.next.Run(ctx, command, shell, shellArgs, path)
}
