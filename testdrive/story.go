package testdrive

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
)

const (
	repoOwner = "acme"
	repoName  = "infra"
	project   = "network"
)

// tellStory plays two teams' pull requests on one project across two
// replicas, narrating what Atlantis does and why. It returns the pull
// requests it left open.
func tellStory(ctx context.Context, out io.Writer, sim *vcssim.Sim, r1, r2 *Replica) ([]*vcssim.PullRequest, error) {
	say := func(format string, args ...any) { fmt.Fprintf(out, "\n--- "+format+"\n", args...) }
	saw := func(format string, args ...any) { fmt.Fprintf(out, "    "+format+"\n", args...) }
	repo, err := sim.CreateRepo(repoOwner, repoName, vcssim.InDir(project, vcssim.TerraformProject("vpc")))
	if err != nil {
		return nil, err
	}
	full := repoOwner + "/" + repoName
	waitComment := func(pr *vcssim.PullRequest, what string, match func(string) bool) (string, error) {
		ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
		c, err := sim.WaitForComment(ctx, full, pr.Number, func(c vcssim.Comment) bool { return match(c.Body) })
		if err != nil {
			return "", fmt.Errorf("waiting for %s on PR #%d: %w", what, pr.Number, err)
		}
		return c.Body, nil
	}

	say("Team Platform opens PR #1 changing %s/; GitHub's webhook lands on %s", project, r1.Name())
	pr1, err := sim.OpenPullRequest(repo, 1, "platform/vpc", vcssim.InDir(project, vcssim.TerraformProject("vpc-platform")), "platform-team")
	if err != nil {
		return nil, err
	}
	if _, err := sim.SendPullRequestOpened(r1.URL+"/events", pr1); err != nil {
		return nil, err
	}
	if _, err := waitComment(pr1, "the autoplan", isPlan); err != nil {
		return nil, err
	}
	saw("Atlantis planned PR #1 and locked %s/%s/default for it.", full, project)
	if err := waitFor(ctx, "the lock on replica 2", func() (bool, error) {
		holders, err := lockHolders(ctx, r2)
		return holders[full+"/"+project+"/default"] == "#1", err
	}); err != nil {
		return nil, err
	}
	saw("%s sees the same lock: it lives in Redis, not in one replica.", r2.Name())

	say("Team Payments opens PR #2 on the same project; its webhook lands on %s", r2.Name())
	pr2, err := sim.OpenPullRequest(repo, 2, "payments/vpc", vcssim.InDir(project, vcssim.TerraformProject("vpc-payments")), "payments-team")
	if err != nil {
		return nil, err
	}
	if _, err := sim.SendPullRequestOpened(r2.URL+"/events", pr2); err != nil {
		return nil, err
	}
	body, err := waitComment(pr2, "the lock message", isLocked)
	if err != nil {
		return nil, err
	}
	saw("PR #2 was refused: %q", firstLine(body))
	saw("Upstream's Redis database reads then writes, so two replicas could both have granted it; this one cannot.")

	say("Team Platform comments `atlantis apply` on PR #1; this time the webhook lands on %s", r2.Name())
	if _, err := sim.SendComment(r2.URL+"/events", pr1, "platform-team", "atlantis apply"); err != nil {
		return nil, err
	}
	if _, err := waitComment(pr1, "the apply", isApply); err != nil {
		return nil, err
	}
	saw("%s applied the plan %s made: they share the data dir and the lock.", r2.Name(), r1.Name())

	say("PR #1 is merged; %s releases its lock", r1.Name())
	if _, err := sim.SendPullRequestClosed(r1.URL+"/events", pr1, true); err != nil {
		return nil, err
	}
	if err := waitFor(ctx, "the lock to be released", func() (bool, error) {
		holders, err := lockHolders(ctx, r2)
		return err == nil && holders[full+"/"+project+"/default"] == "", err
	}); err != nil {
		return nil, err
	}
	saw("The project is free on both replicas.")

	say("Team Payments comments `atlantis plan` on PR #2 (on %s)", r1.Name())
	if _, err := sim.SendComment(r1.URL+"/events", pr2, "payments-team", "atlantis plan"); err != nil {
		return nil, err
	}
	if _, err := waitComment(pr2, "the plan", isPlan); err != nil {
		return nil, err
	}
	saw("PR #2 now holds the lock and has its plan.")
	return []*vcssim.PullRequest{pr2}, nil
}

func isPlan(body string) bool {
	return strings.Contains(body, "Ran Plan for") && !isLocked(body)
}

func isApply(body string) bool { return strings.Contains(body, "Ran Apply for") }

func isLocked(body string) bool { return strings.Contains(body, "currently locked") }

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	for _, line := range strings.Split(s, "\n") {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "Ran ") && !strings.HasPrefix(l, "#") {
			return l
		}
	}
	return s
}
