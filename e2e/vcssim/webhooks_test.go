package vcssim_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-github/v88/github"
	eventscontrollers "github.com/runatlantis/atlantis/server/controllers/events"
	"github.com/runatlantis/atlantis/server/events"
	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"

	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
)

// receivedHook is what a fake Atlantis /events endpoint saw.
type receivedHook struct {
	event, delivery, userAgent, signature string
	payload                               []byte
	validateErr                           error
}

// hookReceiver validates deliveries with upstream Atlantis's own validator
// and answers like Atlantis: 400 on a bad signature, 200 otherwise.
func hookReceiver(t *testing.T, secret string) (string, func() []receivedHook) {
	t.Helper()
	var mu sync.Mutex
	var got []receivedHook
	validator := &eventscontrollers.DefaultGithubRequestValidator{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := receivedHook{
			event:     r.Header.Get("X-GitHub-Event"),
			delivery:  r.Header.Get("X-GitHub-Delivery"),
			userAgent: r.Header.Get("User-Agent"),
			signature: r.Header.Get("X-Hub-Signature-256"),
		}
		h.payload, h.validateErr = validator.Validate(r, []byte(secret))
		mu.Lock()
		got = append(got, h)
		mu.Unlock()
		if h.validateErr != nil {
			http.Error(w, h.validateErr.Error(), http.StatusBadRequest)
			return
		}
		_, _ = io.WriteString(w, "Processing...")
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/events", func() []receivedHook {
		mu.Lock()
		defer mu.Unlock()
		return append([]receivedHook(nil), got...)
	}
}

func TestWebhookSignatureValidatesWithUpstreamValidator(t *testing.T) {
	sim := newSim(t)
	_, pr := newRepoAndPull(t, sim)
	target, received := hookReceiver(t, sim.WebhookSecret())

	d, err := sim.SendPullRequestOpened(target, pr)
	if err != nil {
		t.Fatal(err)
	}
	if d.Status != http.StatusOK {
		t.Fatalf("status %d: %s", d.Status, d.ResponseBody)
	}
	status, err := sim.Redeliver(target, d)
	if err != nil || status != http.StatusOK {
		t.Fatalf("redeliver: status %d, err %v", status, err)
	}
	bad, err := sim.SendWithBadSignature(target, pr)
	if err != nil {
		t.Fatal(err)
	}
	if bad.Status != http.StatusBadRequest {
		t.Fatalf("bad signature answered %d, want 400", bad.Status)
	}

	hooks := received()
	if len(hooks) != 3 {
		t.Fatalf("got %d deliveries, want 3", len(hooks))
	}
	first, again, forged := hooks[0], hooks[1], hooks[2]
	if first.validateErr != nil {
		t.Fatalf("upstream validator rejected delivery: %s", first.validateErr)
	}
	if first.event != "pull_request" || !strings.HasPrefix(first.userAgent, "GitHub-Hookshot/") {
		t.Errorf("headers: event %q user agent %q", first.event, first.userAgent)
	}
	if first.signature != vcssim.Sign(sim.WebhookSecret(), d.Body) {
		t.Errorf("signature %q does not match body", first.signature)
	}
	// Atlantis de-duplicates only GUID-shaped delivery IDs, as GitHub sends.
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`).MatchString(first.delivery) {
		t.Errorf("delivery ID %q is not a GUID", first.delivery)
	}
	if again.delivery != first.delivery || string(again.payload) != string(first.payload) || again.validateErr != nil {
		t.Errorf("redelivery differs: id %q vs %q, err %v", again.delivery, first.delivery, again.validateErr)
	}
	if forged.validateErr == nil {
		t.Error("upstream validator accepted a forged signature")
	}
	if forged.delivery == first.delivery {
		t.Error("forged delivery reused the delivery ID")
	}
}

func TestPullRequestWebhookParsesWithUpstreamParser(t *testing.T) {
	sim := newSim(t)
	repo, pr := newRepoAndPull(t, sim)
	target, received := hookReceiver(t, sim.WebhookSecret())
	parser := &events.EventParser{GithubUser: sim.User(), GithubToken: sim.Token()}
	logger := logging.NewNoopLogger(t)

	if _, err := sim.SendPullRequestOpened(target, pr); err != nil {
		t.Fatal(err)
	}
	var ev github.PullRequestEvent
	if err := json.Unmarshal(received()[0].payload, &ev); err != nil {
		t.Fatal(err)
	}
	// Atlantis decodes with ParseWebHook; make sure that path agrees.
	parsed, err := github.ParseWebHook("pull_request", received()[0].payload)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := parsed.(*github.PullRequestEvent); !ok {
		t.Fatalf("ParseWebHook gave %T", parsed)
	}

	pull, eventType, baseRepo, headRepo, user, err := parser.ParseGithubPullEvent(logger, &ev)
	if err != nil {
		t.Fatalf("ParseGithubPullEvent: %s", err)
	}
	if eventType != models.OpenedPullEvent {
		t.Errorf("event type %s", eventType)
	}
	if baseRepo.FullName != "acme/infra" || headRepo.FullName != "acme/infra" {
		t.Errorf("repos %q %q", baseRepo.FullName, headRepo.FullName)
	}
	// Atlantis drops the port, so --repo-allowlist entries read
	// "127.0.0.1/acme/infra".
	if baseRepo.VCSHost.Hostname != "127.0.0.1" || baseRepo.VCSHost.Type != models.Github {
		t.Errorf("vcs host %+v, want 127.0.0.1", baseRepo.VCSHost)
	}
	wantClone := "https://" + sim.User() + ":" + sim.Token() + "@" + sim.Host() + "/acme/infra.git"
	if baseRepo.CloneURL != wantClone {
		t.Errorf("clone URL %q, want %q", baseRepo.CloneURL, wantClone)
	}
	if pull.Num != 1 || pull.HeadCommit != pr.HeadSHA || pull.HeadBranch != "feature/change" ||
		pull.BaseBranch != "main" || pull.Author != "alice" || pull.State != models.OpenPullState {
		t.Errorf("pull parsed as %+v", pull)
	}
	if len(pr.HeadSHA) != 40 {
		t.Errorf("head sha %q is not a git sha", pr.HeadSHA)
	}
	if user.Username != "alice" {
		t.Errorf("sender %q", user.Username)
	}
	if repo.CloneURL != sim.URL()+"/acme/infra.git" {
		t.Errorf("repo clone URL %q", repo.CloneURL)
	}

	// Closing merges for real and reports it.
	if _, err := sim.SendPullRequestClosed(target, pr, true); err != nil {
		t.Fatal(err)
	}
	var closed github.PullRequestEvent
	if err := json.Unmarshal(received()[1].payload, &closed); err != nil {
		t.Fatal(err)
	}
	_, eventType, _, _, _, err = parser.ParseGithubPullEvent(logger, &closed)
	if err != nil || eventType != models.ClosedPullEvent {
		t.Fatalf("closed event parsed as %s, %v", eventType, err)
	}
	if !closed.GetPullRequest().GetMerged() || closed.GetPullRequest().GetMergeCommitSHA() == "" {
		t.Errorf("closed event not merged: %+v", closed.GetPullRequest())
	}
}

func TestCommentWebhookParsesWithUpstreamParser(t *testing.T) {
	sim := newSim(t)
	_, pr := newRepoAndPull(t, sim)
	target, received := hookReceiver(t, sim.WebhookSecret())
	parser := &events.EventParser{GithubUser: sim.User(), GithubToken: sim.Token()}

	d, err := sim.SendComment(target, pr, "bob", "atlantis plan -d staging")
	if err != nil {
		t.Fatal(err)
	}
	if d.Event != "issue_comment" || d.Status != http.StatusOK {
		t.Fatalf("delivery %s status %d", d.Event, d.Status)
	}
	parsed, err := github.ParseWebHook("issue_comment", received()[0].payload)
	if err != nil {
		t.Fatal(err)
	}
	ev, ok := parsed.(*github.IssueCommentEvent)
	if !ok {
		t.Fatalf("ParseWebHook gave %T", parsed)
	}
	baseRepo, user, num, err := parser.ParseGithubIssueCommentEvent(logging.NewNoopLogger(t), ev)
	if err != nil {
		t.Fatalf("ParseGithubIssueCommentEvent: %s", err)
	}
	if baseRepo.FullName != "acme/infra" || user.Username != "bob" || num != 1 {
		t.Errorf("parsed repo %q user %q num %d", baseRepo.FullName, user.Username, num)
	}
	if ev.GetAction() != "created" || ev.GetComment().GetBody() != "atlantis plan -d staging" || ev.GetIssue().GetPullRequestLinks() == nil {
		t.Errorf("comment event %+v", ev)
	}
	// The typed comment is part of the PR's history, as on GitHub.
	comments := sim.Comments("acme/infra", 1)
	if len(comments) != 1 || comments[0].Author != "bob" || comments[0].ID != ev.GetComment().GetID() {
		t.Errorf("recorded comments %+v", comments)
	}
}
