package vcssim_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
)

// TestRealAtlantis runs an atlantis binary against the Sim through the whole
// PR flow. It needs a binary and terraform on PATH, so it only runs when
// VCSSIM_ATLANTIS_BIN is set, e.g.:
//
//	go build -o /tmp/upatl github.com/runatlantis/atlantis
//	VCSSIM_ATLANTIS_BIN=/tmp/upatl go test ./e2e/vcssim/ -run TestRealAtlantis -v
func TestRealAtlantis(t *testing.T) {
	bin := os.Getenv("VCSSIM_ATLANTIS_BIN")
	if bin == "" {
		t.Skip("set VCSSIM_ATLANTIS_BIN to an atlantis binary to run")
	}
	if _, err := exec.LookPath("terraform"); err != nil {
		t.Skip("terraform not on PATH")
	}
	t.Run("default", func(t *testing.T) { runAtlantisFlow(t, bin) })
	// These flags add the reaction and GraphQL minimizeComment calls.
	t.Run("reactions-and-hiding", func(t *testing.T) {
		runAtlantisFlow(t, bin, "--emoji-reaction=eyes", "--hide-prev-plan-comments")
	})
}

func runAtlantisFlow(t *testing.T, bin string, extraFlags ...string) {
	sim := newSim(t)
	repo, err := sim.CreateRepo("acme", "infra", vcssim.InDir("project", vcssim.TerraformProject("base")))
	if err != nil {
		t.Fatal(err)
	}
	pr, err := sim.OpenPullRequest(repo, 7, "change-project", vcssim.InDir("project", vcssim.TerraformProject("changed")), "alice")
	if err != nil {
		t.Fatal(err)
	}

	port := freePort(t)
	target := fmt.Sprintf("http://127.0.0.1:%d/events", port)
	startAtlantis(t, bin, sim, port, extraFlags...)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	byBot := func(prefix string) func(vcssim.Comment) bool {
		return func(c vcssim.Comment) bool {
			return c.Author == sim.User() && strings.HasPrefix(c.Body, prefix)
		}
	}
	send := func(what string, d vcssim.Delivery, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %s", what, err)
		}
		if d.Status != http.StatusOK {
			t.Fatalf("%s: atlantis answered %d: %s", what, d.Status, d.ResponseBody)
		}
	}

	bad, err := sim.SendWithBadSignature(target, pr)
	if err != nil || bad.Status != http.StatusBadRequest {
		t.Fatalf("forged webhook: status %d, err %v", bad.Status, err)
	}

	d, err := sim.SendPullRequestOpened(target, pr)
	send("opened", d, err)
	plan, err := sim.WaitForComment(ctx, repo.FullName, pr.Number, byBot("Ran Plan"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(plan.Body, "terraform_data.changed") {
		t.Errorf("autoplan comment does not show the change:\n%s", plan.Body)
	}
	// Atlantis comments before it sets the aggregate status and releases
	// the PR's command lock; the next command must wait for the status.
	commandDone := func(context string, after vcssim.Comment) {
		t.Helper()
		if _, err := sim.WaitForStatus(ctx, repo.FullName, pr.HeadSHA, func(st vcssim.Status) bool {
			return st.Context == context && st.State == "success" && !st.CreatedAt.Before(after.CreatedAt)
		}); err != nil {
			t.Fatal(err)
		}
	}
	commandDone("atlantis/plan", plan)

	// Atlantis does not deduplicate deliveries: a redelivery autoplans
	// again, and the apply below must wait for it or hit the plan lock.
	if status, err := sim.Redeliver(target, d); err != nil || status != http.StatusOK {
		t.Fatalf("redeliver: %d, %v", status, err)
	}
	replan, err := sim.WaitForComment(ctx, repo.FullName, pr.Number, func(c vcssim.Comment) bool {
		return byBot("Ran Plan")(c) && c.ID != plan.ID
	})
	if err != nil {
		t.Fatal(err)
	}
	commandDone("atlantis/plan", replan)

	d, err = sim.SendComment(target, pr, "alice", "atlantis apply")
	send("apply", d, err)
	apply, err := sim.WaitForComment(ctx, repo.FullName, pr.Number, byBot("Ran Apply"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(apply.Body, "Apply complete!") {
		t.Errorf("apply comment:\n%s", apply.Body)
	}
	commandDone("atlantis/apply", apply)

	d, err = sim.SendComment(target, pr, "alice", "atlantis plan")
	send("plan", d, err)
	manual, err := sim.WaitForComment(ctx, repo.FullName, pr.Number, func(c vcssim.Comment) bool {
		return byBot("Ran Plan")(c) && c.ID > apply.ID
	})
	if err != nil {
		t.Fatal(err)
	}
	commandDone("atlantis/plan", manual)

	d, err = sim.SendComment(target, pr, "alice", "atlantis unlock")
	send("unlock", d, err)
	if _, err := sim.WaitForComment(ctx, repo.FullName, pr.Number, func(c vcssim.Comment) bool {
		return c.Author == sim.User() && strings.Contains(c.Body, "unlocked")
	}); err != nil {
		t.Fatal(err)
	}

	statuses := sim.Statuses(repo.FullName, pr.HeadSHA)
	final := map[string]string{}
	for _, st := range statuses {
		final[st.Context] = st.State
	}
	if final["atlantis/apply"] != "success" {
		t.Errorf("final statuses %v", final)
	}

	d, err = sim.SendPullRequestClosed(target, pr, true)
	send("closed", d, err)
	// Atlantis cleans up asynchronously; give it a moment so the request
	// log below is complete.
	time.Sleep(2 * time.Second)

	seen := map[string]int{}
	for _, r := range sim.Requests() {
		seen[fmt.Sprintf("%s %s -> %d", r.Method, r.Path, r.Status)]++
	}
	for _, k := range slices.Sorted(maps.Keys(seen)) {
		t.Logf("%3d x %s", seen[k], k)
	}
	for _, c := range sim.Comments(repo.FullName, pr.Number) {
		first, _, _ := strings.Cut(c.Body, "\n")
		t.Logf("comment by %s (minimized=%v reactions=%v): %s", c.Author, c.Minimized, c.Reactions, first)
	}
	for _, st := range statuses {
		t.Logf("status %s=%s %q", st.Context, st.State, st.Description)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().(*net.TCPAddr).Port
}

// startAtlantis runs `atlantis server` pointed at the Sim and waits until it
// is healthy; the process is stopped when the test ends.
func startAtlantis(t *testing.T, bin string, sim *vcssim.Sim, port int, extraFlags ...string) {
	t.Helper()
	dataDir := t.TempDir()
	args := []string{"server",
		"--gh-hostname=" + sim.Host(),
		"--gh-user=" + sim.User(),
		"--gh-token=" + sim.Token(),
		"--gh-webhook-secret=" + sim.WebhookSecret(),
		"--repo-allowlist=*",
		fmt.Sprintf("--port=%d", port),
		fmt.Sprintf("--atlantis-url=http://127.0.0.1:%d", port),
		"--data-dir=" + dataDir,
		"--tf-download=false",
		"--log-level=debug",
	}
	cmd := exec.Command(bin, append(args, extraFlags...)...)
	cmd.Env = append(os.Environ(), sim.Env()...)
	cmd.Env = append(cmd.Env, "TF_IN_AUTOMATION=1", "CHECKPOINT_DISABLE=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting atlantis: %s", err)
	}
	logged := make(chan struct{})
	go func() {
		defer close(logged)
		logAtlantis(t, out)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		<-logged
	})

	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", port))
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("atlantis not healthy after 60s: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// logAtlantis forwards atlantis's warnings and errors to the test log;
// debug output is too noisy unless VCSSIM_ATLANTIS_VERBOSE is set.
func logAtlantis(t *testing.T, r io.Reader) {
	verbose := os.Getenv("VCSSIM_ATLANTIS_VERBOSE") != ""
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if verbose || strings.Contains(line, `"level":"warn"`) || strings.Contains(line, `"level":"error"`) {
			t.Log("atlantis: " + line)
		}
	}
}
