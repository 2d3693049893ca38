package testdrive

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
)

// Options configures a testdrive run.
type Options struct {
	// Binary is the atlantis binary the replicas run.
	Binary string
	// RedisAddr is an external Redis to use; empty starts a redis-server of
	// its own, or miniredis in-process where none is installed.
	RedisAddr string
	// ExitAfterStory stops everything once the story is told, for CI.
	ExitAfterStory bool
	// RaceRounds is how many times the story has two pulls plan one project
	// on both replicas at the same instant; 0 means DefaultRaceRounds.
	RaceRounds int
	Out        io.Writer
}

// DefaultRaceRounds keeps the race to a few seconds.
const DefaultRaceRounds = 10

const apiSecret = "testdrive"

// priorityRules is the --enhanced-locking-priority-rules file the replicas
// run with.
const priorityRules = `# Written by atlantis-testdrive: a hotfix goes ahead of every other pull
# waiting for the same project.
default: normal
rules:
  - head_branch: "` + hotfixBranches + `"
    priority: critical
`

// Run sets up the fleet, tells the story and, unless ExitAfterStory, keeps
// everything up until ctx is done.
func Run(ctx context.Context, opts Options) (err error) {
	out := opts.Out
	step := func(format string, args ...any) { fmt.Fprintf(out, "==> "+format+"\n", args...) }
	note := func(format string, args ...any) { fmt.Fprintf(out, "    "+format+"\n", args...) }

	work, err := os.MkdirTemp("", "atlantis-testdrive-")
	if err != nil {
		return err
	}
	defer func() {
		// A failed run keeps its logs for the error message to point at.
		if err == nil {
			os.RemoveAll(work) // nolint: errcheck
		}
	}()

	tfDir, err := ensureTerraform(out, step)
	if err != nil {
		return err
	}
	step("Terraform from %s", tfDir)

	redisAddr := opts.RedisAddr
	if redisAddr == "" {
		local, err := startLocalRedis(filepath.Join(work, "redis"))
		if err != nil {
			return err
		}
		defer local.Stop()
		redisAddr = local.Addr
		if local.InProcess {
			step("Redis: no redis-server installed, so an in-process one (miniredis) at %s; install redis-server (make run does) or pass --redis-addr to use a real one", redisAddr)
		} else {
			step("Redis: a redis-server of its own at %s; pass --redis-addr to use another", redisAddr)
		}
	} else {
		step("Redis: %s", redisAddr)
	}

	logPath := filepath.Join(work, "replicas.log")
	logFile, err := os.Create(logPath) // nolint: gosec
	if err != nil {
		return err
	}
	defer logFile.Close() // nolint: errcheck
	sim, err := vcssim.New(vcssim.Options{Logf: func(format string, args ...any) {
		fmt.Fprintf(logFile, "[github] "+format+"\n", args...)
	}})
	if err != nil {
		return fmt.Errorf("starting the GitHub stand-in: %w", err)
	}
	defer sim.Close() // nolint: errcheck
	step("GitHub stand-in at %s (API, git and signed webhooks, all local)", sim.URL())

	rulesPath := filepath.Join(work, "priority-rules.yaml")
	if err := os.WriteFile(rulesPath, []byte(priorityRules), 0o600); err != nil {
		return err
	}
	step("Starting two Atlantis replicas with enhanced locking and its priority queue on one Redis (logs: %s)", logPath)
	note("priority rules: %s", rulesPath)
	fleet, err := StartFleet(ctx, FleetConfig{
		Binary:       opts.Binary,
		Replicas:     2,
		RedisAddr:    redisAddr,
		DataDir:      filepath.Join(work, "data"),
		TerraformDir: tfDir,
		Sim:          sim,
		ExtraArgs: []string{
			"--api-secret=" + apiSecret,
			"--enhanced-locking-priority-queue",
			"--enhanced-locking-auto-plan",
			"--enhanced-locking-priority-rules=" + rulesPath,
		},
		Log: logFile,
	})
	if err != nil {
		return err
	}
	defer fleet.Stop()
	r1, r2 := fleet.Replicas[0], fleet.Replicas[1]
	note("%s: %s", r1.Name(), r1.URL)
	note("%s: %s", r2.Name(), r2.URL)

	rounds := opts.RaceRounds
	if rounds <= 0 {
		rounds = DefaultRaceRounds
	}
	openPRs, err := tellStory(ctx, out, sim, redisAddr, rounds, r1, r2)
	if err != nil {
		return fmt.Errorf("%w\n(replica logs: %s)", err, logPath)
	}
	// Closing the story's pull requests releases their locks, so a Redis
	// passed with --redis-addr is left as it was found.
	defer closePulls(out, sim, r1, openPRs)

	fmt.Fprintf(out, "\nOpen these while it runs:\n")
	fmt.Fprintf(out, "  Locks page, replica 1:   %s/\n", r1.URL)
	fmt.Fprintf(out, "  Locks page, replica 2:   %s/\n", r2.URL)
	fmt.Fprintf(out, "  Queue page, replica 1:   %s/queue\n", r1.URL)
	fmt.Fprintf(out, "  Queue page, replica 2:   %s/queue\n", r2.URL)
	fmt.Fprintf(out, "  Lock API:                curl -H 'X-Atlantis-Token: %s' %s/api/locks\n", apiSecret, r2.URL)
	fmt.Fprintf(out, "  Queue API:               curl -H 'X-Atlantis-Token: %s' %s%s\n", apiSecret, r1.URL, queueStatusPath)
	fmt.Fprintf(out, "  Health and backend:      curl %s/healthz\n", r1.URL)
	if opts.ExitAfterStory {
		step("Story told; stopping (--exit-after-story)")
		return nil
	}
	fmt.Fprintf(out, "\nPress Ctrl-C to stop.\n")
	<-ctx.Done()
	step("Stopping")
	return nil
}

// closePulls closes the pull requests the story left open, in order, each
// once the one before has let go of its locks and left its queues, so that
// none is handed a lock on the way out.
func closePulls(out io.Writer, sim *vcssim.Sim, r *Replica, prs []*vcssim.PullRequest) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, pr := range prs {
		if _, err := sim.SendPullRequestClosed(r.URL+"/events", pr, false); err != nil {
			fmt.Fprintf(out, "    could not close PR #%d: %s\n", pr.Number, err)
			continue
		}
		err := waitFor(ctx, fmt.Sprintf("PR #%d to let go of its locks and queues", pr.Number), func() (bool, error) {
			queues, err := queueStatus(ctx, r)
			return err == nil && !inQueues(queues, pr.Number), err
		})
		if err != nil {
			fmt.Fprintf(out, "    %s\n", err)
		}
	}
}

// inQueues says whether pull holds or waits for any of the locks.
func inQueues(queues map[string]lockQueue, pull int) bool {
	for _, q := range queues {
		if q.holder() == pull {
			return true
		}
		for _, e := range q.Queue {
			if e.PullNumber == pull {
				return true
			}
		}
	}
	return false
}

// ensureTerraform finds terraform, or builds 1.5.7 from source with the Go
// toolchain, which needs only the Go module proxy.
func ensureTerraform(out io.Writer, step func(string, ...any)) (string, error) {
	cwd, _ := os.Getwd()
	if dir, err := FindTerraform(cwd); err == nil {
		return dir, nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	bin := filepath.Join(cache, "atlantis-testdrive", "bin")
	if _, err := os.Stat(filepath.Join(bin, "terraform")); err == nil {
		return bin, nil
	}
	if _, err := exec.LookPath("go"); err != nil {
		return "", fmt.Errorf("no terraform on PATH and no Go toolchain to build it: install Terraform, or run ./scripts/install-deps.sh")
	}
	step("Building Terraform 1.5.7 into %s with go install (a few minutes, once)", bin)
	cmd := exec.Command("go", "install", "github.com/hashicorp/terraform@v1.5.7")
	cmd.Env = append(os.Environ(), "GOBIN="+bin)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building terraform: %w", err)
	}
	return bin, nil
}

// waitFor polls check until it reports done, ctx ends or a minute passes.
func waitFor(ctx context.Context, what string, check func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	for {
		done, err := check()
		if err == nil && done {
			return nil
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("waiting for %s: %w", what, err)
			}
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
