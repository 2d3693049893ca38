package vcssim_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/runatlantis/atlantis/server/events/models"

	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
)

// git runs git with the Sim's CA trusted and no host configuration.
func git(t *testing.T, sim *vcssim.Sim, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL="+os.DevNull, "GIT_TERMINAL_PROMPT=0")
	cmd.Env = append(cmd.Env, sim.Env()...)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func TestGitCloneOverHTTPSLikeAtlantis(t *testing.T) {
	sim := newSim(t)
	repo, pr := newRepoAndPull(t, sim)

	// Build the clone URL exactly as Atlantis does from the webhook's
	// clone_url and its --gh-user/--gh-token.
	atlRepo, err := models.NewRepo(models.Github, repo.FullName, repo.CloneURL, sim.User(), sim.Token(), "")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()

	// Atlantis's default "branch" checkout strategy.
	branchDir := filepath.Join(dir, "branch")
	if out, err := git(t, sim, dir, "clone", "--depth=1", "--branch", pr.HeadRef, "--single-branch", atlRepo.CloneURL, branchDir); err != nil {
		t.Fatalf("clone: %s: %s", err, out)
	}
	head, err := git(t, sim, branchDir, "rev-parse", "HEAD")
	if err != nil || head != pr.HeadSHA {
		t.Fatalf("HEAD %q (err %v), want PR head %s", head, err, pr.HeadSHA)
	}
	data, err := os.ReadFile(filepath.Join(branchDir, "staging", "main.tf"))
	if err != nil || !strings.Contains(string(data), `"staging"`) {
		t.Fatalf("staging/main.tf: %q, %v", data, err)
	}

	// The "merge" strategy: clone the base, fetch the head, merge.
	mergeDir := filepath.Join(dir, "merge")
	if out, err := git(t, sim, dir, "clone", "--branch", "main", "--single-branch", atlRepo.CloneURL, mergeDir); err != nil {
		t.Fatalf("clone main: %s: %s", err, out)
	}
	if out, err := git(t, sim, mergeDir, "fetch", "origin", "pull/1/head:"); err != nil {
		t.Fatalf("fetch pull/1/head: %s: %s", err, out)
	}
	fetched, _ := git(t, sim, mergeDir, "rev-parse", "FETCH_HEAD")
	if fetched != pr.HeadSHA {
		t.Fatalf("pull/1/head is %q, want %s", fetched, pr.HeadSHA)
	}

	// Without credentials the private repo is refused, as on GitHub.
	if out, err := git(t, sim, dir, "ls-remote", repo.CloneURL); err == nil {
		t.Fatalf("anonymous ls-remote succeeded: %s", out)
	}
	wrong := strings.Replace(atlRepo.CloneURL, sim.Token(), "wrong-token", 1)
	if out, err := git(t, sim, dir, "ls-remote", wrong); err == nil {
		t.Fatalf("ls-remote with a wrong token succeeded: %s", out)
	}
	// Without the CA, TLS verification fails.
	cmd := exec.Command("git", "ls-remote", atlRepo.CloneURL)
	cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL="+os.DevNull, "GIT_TERMINAL_PROMPT=0", "GIT_SSL_CAINFO=/dev/null")
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("ls-remote without the CA succeeded: %s", out)
	}
}

func TestUpdateAndMergeKeepRealHistory(t *testing.T) {
	sim := newSim(t)
	repo, pr := newRepoAndPull(t, sim)
	first := pr.HeadSHA

	updated, err := sim.UpdatePullRequest(pr, map[string]string{
		"docs/notes/README.txt": vcssim.Deleted,
		"prod/main.tf":          vcssim.TerraformProject("prod")["main.tf"],
	})
	if err != nil {
		t.Fatal(err)
	}
	if updated.HeadSHA == first {
		t.Fatal("head did not move")
	}
	atlRepo, err := models.NewRepo(models.Github, repo.FullName, repo.CloneURL, sim.User(), sim.Token(), "")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "clone")
	if out, err := git(t, sim, filepath.Dir(dir), "clone", atlRepo.CloneURL, dir); err != nil {
		t.Fatalf("clone: %s: %s", err, out)
	}
	parent, _ := git(t, sim, dir, "rev-parse", "origin/feature/change^")
	if parent != first {
		t.Fatalf("new head's parent %q, want %s", parent, first)
	}
	if _, err := os.Stat(filepath.Join(dir, "docs")); err == nil {
		// main is checked out; the deleted file lived only on the branch.
		t.Fatal("docs/ exists on main")
	}

	target, _ := hookReceiver(t, sim.WebhookSecret())
	if _, err := sim.SendPullRequestSynchronize(target, updated); err != nil {
		t.Fatal(err)
	}
	if _, err := sim.SendPullRequestClosed(target, updated, true); err != nil {
		t.Fatal(err)
	}
	merged, err := sim.PullRequest(repo.FullName, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !merged.Merged || merged.State != "closed" {
		t.Fatalf("pull after close: %+v", merged)
	}
	if out, err := git(t, sim, dir, "pull", "--quiet"); err != nil {
		t.Fatalf("pull: %s: %s", err, out)
	}
	tip, _ := git(t, sim, dir, "rev-parse", "HEAD")
	if tip != merged.MergeCommitSHA {
		t.Fatalf("main is %q, want merge commit %s", tip, merged.MergeCommitSHA)
	}
	if _, err := os.Stat(filepath.Join(dir, "prod", "main.tf")); err != nil {
		t.Fatalf("merged file missing: %s", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "docs", "notes", "README.txt")); err == nil {
		t.Fatal("file deleted on the branch survived the merge")
	}
}
