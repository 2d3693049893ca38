package testdrive_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/runatlantis/atlantis/testing"
)

// TestTestdriveStory runs the README's main job as CI would: `make run
// ARGS=--exit-after-story`, the testdrive binary starting the atlantis binary
// built next to it, on a redis-server of its own, telling the story and
// exiting.
func TestTestdriveStory(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the atlantis binary; run without -short")
	}
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+string(filepath.Separator),
		"github.com/atlantis-enhanced/atlantis", "github.com/atlantis-enhanced/atlantis/testdrive/cmd/atlantis-testdrive")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building atlantis and atlantis-testdrive: %s\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	out := &bytes.Buffer{}
	run := exec.CommandContext(ctx, filepath.Join(bin, "atlantis-testdrive"), "--exit-after-story") // nolint: gosec
	run.Stdout, run.Stderr = out, out
	// An interrupt lets it stop the replicas and Redis it started.
	run.Cancel = func() error { return run.Process.Signal(os.Interrupt) }
	run.WaitDelay = time.Minute
	err := run.Run()
	t.Log(out.String())
	Ok(t, err)
	for _, line := range []string{
		"==> Redis: a redis-server of its own at 127.0.0.1:",
		"Atlantis planned PR #1 and locked acme/infra/network/default for it.",
		"replica-2 sees the same lock",
		"PR #2 was refused",
		"currently locked by an unapplied plan from pull #1",
		"PR #2 was queued: position 1 of 1 for `network` (workspace `default`), locked by #1, priority normal.",
		"replica-2 applied the plan replica-1 made",
		"PR #2 was told: \"**Lock handed over**",
		"A plan comment appeared on PR #2 with nobody commenting: replica-",
		"Redis says #2 holds acme/infra/network/default.",
		"PR #2 now holds the lock and has its plan.",
		"PR #3 was queued: position 1 of 1 for `network` (workspace `default`), locked by #2, priority normal.",
		"PR #4 was queued: position 1 of 2 for `network` (workspace `default`), locked by #2, priority critical.",
		"PR #3 was told it moved back: position 2 of 2 for `network` (workspace `default`), locked by #2, priority normal.",
		"lists the queue of acme/infra/network/default: 1. #4 (critical), 2. #3 (normal).",
		"PR #4 was told: \"**Lock handed over**",
		"Redis says #4 holds acme/infra/network/default.",
		"PR #3 is next: position 1 of 1 for `network` (workspace `default`), locked by #4, priority normal.",
		"The critical PR #4 got the lock first, though PR #3 had queued before it.",
		"Rounds that granted the lock twice: 0 of 10 (by the pulls' plan comments).",
		"Rounds that queued the loser behind the winner: 10 of 10 (by /api/locks/queue-status).",
		"Rounds in which Redis named another holder than the pull that planned: 0.",
		"acme/infra/dns/default is free again.",
		"/api/locks/queue-status: held by #4; queue: 1. #3 (normal).",
		"/queue\n",
		"/api/locks/queue-status\n",
	} {
		Assert(t, strings.Contains(out.String(), line), "story lacks %q", line)
	}
}
