package vcssim_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
)

// Example shows how a harness drives Atlantis with the Sim. It is compiled
// but not run, since it needs an atlantis binary listening on :4141.
func Example() {
	sim, err := vcssim.New(vcssim.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = sim.Close() }()

	repo, err := sim.CreateRepo("acme", "infra", vcssim.InDir("network", vcssim.TerraformProject("vpc")))
	if err != nil {
		log.Fatal(err)
	}

	atlantis := exec.Command("atlantis", "server",
		"--gh-hostname="+sim.Host(),
		"--gh-user="+sim.User(),
		"--gh-token="+sim.Token(),
		"--gh-webhook-secret="+sim.WebhookSecret(),
		"--repo-allowlist=*",
		"--port=4141",
		"--tf-download=false",
	)
	// Later entries win, so the Sim's CA replaces any inherited bundle.
	atlantis.Env = append(os.Environ(), sim.Env()...)
	if err := atlantis.Start(); err != nil {
		log.Fatal(err)
	}
	defer func() { _ = atlantis.Process.Kill() }()

	pr, err := sim.OpenPullRequest(repo, 1, "bigger-vpc", vcssim.InDir("network", vcssim.TerraformProject("vpc2")), "alice")
	if err != nil {
		log.Fatal(err)
	}
	const target = "http://127.0.0.1:4141/events"
	if _, err := sim.SendPullRequestOpened(target, pr); err != nil {
		log.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	plan, err := sim.WaitForComment(ctx, repo.FullName, pr.Number, func(c vcssim.Comment) bool {
		return c.Author == sim.User() && strings.HasPrefix(c.Body, "Ran Plan")
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(strings.SplitN(plan.Body, "\n", 2)[0])

	if _, err := sim.SendComment(target, pr, "alice", "atlantis apply"); err != nil {
		log.Fatal(err)
	}
	if _, err := sim.WaitForComment(ctx, repo.FullName, pr.Number, func(c vcssim.Comment) bool {
		return c.Author == sim.User() && strings.HasPrefix(c.Body, "Ran Apply")
	}); err != nil {
		log.Fatal(err)
	}
	if _, err := sim.SendPullRequestClosed(target, pr, true); err != nil {
		log.Fatal(err)
	}
}
