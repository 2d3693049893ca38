package vcssim_test

import (
	"net/http"
	"os"
	"strings"
	"testing"

	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
)

// newSim starts a Sim for one test and fails the test if Atlantis-facing
// code hit an endpoint the Sim does not implement.
func newSim(t *testing.T) *vcssim.Sim {
	t.Helper()
	sim, err := vcssim.New(vcssim.Options{Logf: t.Logf})
	if err != nil {
		t.Fatalf("starting sim: %s", err)
	}
	t.Cleanup(func() {
		for _, r := range sim.UnknownRequests() {
			t.Errorf("unknown request: %s", r)
		}
		if err := sim.Close(); err != nil {
			t.Errorf("closing sim: %s", err)
		}
	})
	return sim
}

// newRepoAndPull creates acme/infra with a Terraform project at the root and
// opens PR #1 changing it.
func newRepoAndPull(t *testing.T, sim *vcssim.Sim) (*vcssim.Repo, *vcssim.PullRequest) {
	t.Helper()
	repo, err := sim.CreateRepo("acme", "infra", vcssim.TerraformProject("base"))
	if err != nil {
		t.Fatalf("creating repo: %s", err)
	}
	pr, err := sim.OpenPullRequest(repo, 1, "feature/change", map[string]string{
		"main.tf":               vcssim.TerraformProject("changed")["main.tf"],
		"staging/main.tf":       vcssim.TerraformProject("staging")["main.tf"],
		"docs/notes/README.txt": "notes\n",
	}, "alice")
	if err != nil {
		t.Fatalf("opening pull request: %s", err)
	}
	return repo, pr
}

func TestCloseRemovesTempDirs(t *testing.T) {
	sim, err := vcssim.New(vcssim.Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sim.CreateRepo("acme", "infra", nil); err != nil {
		t.Fatal(err)
	}
	caFile := sim.CAFile()
	if _, err := os.Stat(caFile); err != nil {
		t.Fatalf("CA file missing while running: %s", err)
	}
	if err := sim.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(caFile); !os.IsNotExist(err) {
		t.Fatalf("CA file still present after Close: %v", err)
	}
	if _, err := http.Get(sim.URL()); err == nil {
		t.Fatal("server still answering after Close")
	}
	if err := sim.Close(); err != nil {
		t.Fatalf("second Close: %s", err)
	}
}

func TestRejectsBadInput(t *testing.T) {
	sim := newSim(t)
	for _, tc := range []struct{ owner, name string }{
		{"", "x"}, {"acme", ""}, {"ac/me", "x"}, {"acme", "x.git"}, {"..", "x"},
	} {
		if _, err := sim.CreateRepo(tc.owner, tc.name, nil); err == nil {
			t.Errorf("CreateRepo(%q, %q) succeeded", tc.owner, tc.name)
		}
	}
	repo, err := sim.CreateRepo("acme", "infra", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sim.CreateRepo("ACME", "Infra", nil); err == nil {
		t.Error("duplicate repo (different case) accepted")
	}
	for _, files := range []map[string]string{
		nil, {"../escape": "x"}, {"/abs": "x"}, {".git/config": "x"},
	} {
		if _, err := sim.OpenPullRequest(repo, 1, "b", files, "alice"); err == nil {
			t.Errorf("OpenPullRequest with files %v succeeded", files)
		}
	}
	if _, err := sim.OpenPullRequest(repo, 1, "bad..branch", map[string]string{"a": "b"}, "alice"); err == nil {
		t.Error("invalid branch accepted")
	}
	if _, err := sim.OpenPullRequest(repo, 0, "b", map[string]string{"a": "b"}, "alice"); err == nil {
		t.Error("PR number 0 accepted")
	}
	if _, err := sim.OpenPullRequest(nil, 1, "b", map[string]string{"a": "b"}, "alice"); err == nil {
		t.Error("nil repo accepted")
	}
	if _, err := sim.OpenPullRequest(repo, 1, "b", map[string]string{"a": "b"}, "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := sim.OpenPullRequest(repo, 1, "c", map[string]string{"a": "b"}, "alice"); err == nil {
		t.Error("duplicate PR number accepted")
	}
	if _, err := sim.SendComment("http://127.0.0.1:1/events", nil, "alice", "atlantis plan"); err == nil {
		t.Error("SendComment with nil PR succeeded")
	}
}

func TestTerraformProject(t *testing.T) {
	files := vcssim.InDir("envs/prod", vcssim.TerraformProject("web"))
	body, ok := files["envs/prod/main.tf"]
	if !ok || len(files) != 1 {
		t.Fatalf("unexpected files: %v", files)
	}
	if !strings.Contains(body, `resource "terraform_data" "web"`) {
		t.Fatalf("main.tf lacks terraform_data resource:\n%s", body)
	}
}

// A client token authenticates as the same user, and everything done with it
// names the client.
func TestSim_ClientTokensNameWhoDidWhat(t *testing.T) {
	sim := newSim(t)
	repo, err := sim.CreateRepo("acme", "infra", map[string]string{"main.tf": "# empty\n"})
	Ok(t, err)
	pr, err := sim.OpenPullRequest(repo, 1, "change", map[string]string{"main.tf": "# changed\n"}, "alice")
	Ok(t, err)
	for _, client := range []string{"replica-1", ""} {
		token := sim.Token()
		if client != "" {
			token = sim.ClientToken(client)
		}
		req, err := http.NewRequest("POST", sim.URL()+"/api/v3/repos/acme/infra/issues/1/comments", strings.NewReader(`{"body":"hello"}`))
		Ok(t, err)
		req.SetBasicAuth(sim.User(), token)
		resp, err := (&http.Client{Transport: sim.Transport()}).Do(req)
		Ok(t, err)
		resp.Body.Close() // nolint: errcheck
		Equals(t, http.StatusCreated, resp.StatusCode)
	}
	comments := sim.Comments("acme/infra", pr.Number)
	Equals(t, 2, len(comments))
	Equals(t, "replica-1", comments[0].Client)
	Equals(t, sim.User(), comments[0].Author)
	Equals(t, "", comments[1].Client)
	byClient := map[string]int{}
	for _, r := range sim.Requests() {
		byClient[r.Client]++
	}
	Equals(t, 1, byClient["replica-1"])

	req, err := http.NewRequest("GET", sim.URL()+"/api/v3/repos/acme/infra", nil)
	Ok(t, err)
	req.SetBasicAuth(sim.User(), sim.Token()+"-never-handed-out")
	resp, err := (&http.Client{Transport: sim.Transport()}).Do(req)
	Ok(t, err)
	resp.Body.Close() // nolint: errcheck
	Equals(t, http.StatusUnauthorized, resp.StatusCode)
}
