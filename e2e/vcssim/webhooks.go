package vcssim

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha1" // #nosec G505 -- GitHub still sends the legacy X-Hub-Signature.
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/google/go-github/v88/github"
	"github.com/google/uuid"
)

// hookID is the ID of the (single, implicit) webhook configured on every
// repo; GitHub sends it in X-GitHub-Hook-ID.
const hookID = "424242"

// Delivery is one webhook delivery: what was sent and how the receiver
// answered. Pass it to Redeliver to replay it like GitHub's "Redeliver"
// button, with the same body and X-GitHub-Delivery.
type Delivery struct {
	ID     string // X-GitHub-Delivery
	Event  string // X-GitHub-Event: pull_request, issue_comment
	Action string
	Repo   string // "owner/name"
	Body   []byte
	// Status is the HTTP status the receiver answered; ResponseBody its
	// body, which is where Atlantis explains a rejected event.
	Status       int
	ResponseBody string
}

// SendPullRequestOpened sends a pull_request "opened" webhook, which makes
// Atlantis autoplan.
func (s *Sim) SendPullRequestOpened(target string, pr *PullRequest) (Delivery, error) {
	return s.sendPullRequestEvent(target, pr, "opened", s.webhookSecret)
}

// SendPullRequestSynchronize sends a pull_request "synchronize" webhook for
// the commit pushed by the last UpdatePullRequest.
func (s *Sim) SendPullRequestSynchronize(target string, pr *PullRequest) (Delivery, error) {
	return s.sendPullRequestEvent(target, pr, "synchronize", s.webhookSecret)
}

// SendPullRequestClosed closes the pull request and sends the "closed"
// webhook, which makes Atlantis delete its locks and plans. With merged the
// branch is really merged into main first (unless already merged, e.g. by
// Atlantis's automerge).
func (s *Sim) SendPullRequestClosed(target string, pr *PullRequest, merged bool) (Delivery, error) {
	s.mu.Lock()
	_, ps, err := s.lookupPull(pr)
	var state string
	var alreadyMerged bool
	if err == nil {
		state, alreadyMerged = ps.pr.State, ps.pr.Merged
	}
	s.mu.Unlock()
	if err != nil {
		return Delivery{}, err
	}
	switch {
	case merged && !alreadyMerged && state == "open":
		if _, err := s.mergePull(pr, "merge", pr.Author); err != nil {
			return Delivery{}, fmt.Errorf("merging before close: %w", err)
		}
	case merged && !alreadyMerged:
		return Delivery{}, fmt.Errorf("pull request %s#%d is closed without being merged", pr.Repo.FullName, pr.Number)
	default:
		if err := s.closePull(pr); err != nil {
			return Delivery{}, err
		}
	}
	return s.sendPullRequestEvent(target, pr, "closed", s.webhookSecret)
}

// SendWithBadSignature sends a pull_request "opened" webhook signed with the
// wrong secret; Atlantis must answer 400 and do nothing.
func (s *Sim) SendWithBadSignature(target string, pr *PullRequest) (Delivery, error) {
	return s.sendPullRequestEvent(target, pr, "opened", s.webhookSecret+"-wrong")
}

// SendComment records a comment by user on the pull request, as if typed
// in the GitHub UI, and sends the issue_comment "created" webhook, e.g.
// with body "atlantis apply".
func (s *Sim) SendComment(target string, pr *PullRequest, user, body string) (Delivery, error) {
	if user == "" || body == "" {
		return Delivery{}, fmt.Errorf("user and body are required")
	}
	s.mu.Lock()
	rs, ps, err := s.lookupPull(pr)
	if err != nil {
		s.mu.Unlock()
		return Delivery{}, err
	}
	c := s.addComment(rs.repo.FullName, ps.pr.Number, user, body)
	event := &github.IssueCommentEvent{
		Action:       github.Ptr("created"),
		Issue:        s.ghIssue(rs, ps),
		Comment:      s.ghComment(c),
		Repo:         s.ghRepo(rs.repo),
		Sender:       s.ghUser(user),
		Organization: s.ghOrganization(rs.repo.Owner),
	}
	repo := rs.repo.FullName
	s.mu.Unlock()

	s.logf("vcssim: %s commented on %s#%d: %.100q", user, repo, pr.Number, body)
	return s.deliver(target, "issue_comment", "created", repo, event, s.webhookSecret)
}

func (s *Sim) sendPullRequestEvent(target string, pr *PullRequest, action, secret string) (Delivery, error) {
	s.mu.Lock()
	rs, ps, err := s.lookupPull(pr)
	if err != nil {
		s.mu.Unlock()
		return Delivery{}, err
	}
	event := &github.PullRequestEvent{
		Action:       github.Ptr(action),
		Number:       github.Ptr(ps.pr.Number),
		PullRequest:  s.ghPull(rs, ps, true),
		Repo:         s.ghRepo(rs.repo),
		Sender:       s.ghUser(ps.pr.Author),
		Organization: s.ghOrganization(rs.repo.Owner),
	}
	if action == "synchronize" {
		event.Before = github.Ptr(ps.previousSHA)
		event.After = github.Ptr(ps.pr.HeadSHA)
	}
	repo := rs.repo.FullName
	s.mu.Unlock()
	return s.deliver(target, "pull_request", action, repo, event, secret)
}

func (s *Sim) deliver(target, event, action, repo string, payload any, secret string) (Delivery, error) {
	body, err := json.Marshal(payload)
	if err != nil {
		return Delivery{}, fmt.Errorf("encoding %s webhook: %w", event, err)
	}
	d := Delivery{
		ID:     uuid.NewString(),
		Event:  event,
		Action: action,
		Repo:   repo,
		Body:   body,
	}
	d.Status, d.ResponseBody, err = s.post(target, d, secret)
	return d, err
}

// Redeliver sends d again with the same body and X-GitHub-Delivery and
// returns the receiver's status.
func (s *Sim) Redeliver(target string, d Delivery) (int, error) {
	status, _, err := s.post(target, d, s.webhookSecret)
	return status, err
}

// Sign returns the X-Hub-Signature-256 value GitHub computes for body.
func Sign(secret string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

func signSHA1(secret string, body []byte) string {
	mac := hmac.New(sha1.New, []byte(secret))
	mac.Write(body)
	return "sha1=" + hex.EncodeToString(mac.Sum(nil))
}

// post delivers the webhook with GitHub's headers. A non-2xx answer is not
// an error: negative tests expect them, and Delivery.Status carries it.
func (s *Sim) post(target string, d Delivery, secret string) (int, string, error) {
	req, err := http.NewRequest(http.MethodPost, target, bytes.NewReader(d.Body))
	if err != nil {
		return 0, "", fmt.Errorf("building %s webhook request: %w", d.Event, err)
	}
	h := req.Header
	h.Set("Content-Type", "application/json")
	h.Set("User-Agent", "GitHub-Hookshot/vcssim")
	h.Set("Accept", "*/*")
	h.Set("X-GitHub-Event", d.Event)
	h.Set("X-GitHub-Delivery", d.ID)
	h.Set("X-GitHub-Hook-ID", hookID)
	h.Set("X-GitHub-Hook-Installation-Target-Type", "repository")
	h.Set("X-GitHub-Enterprise-Host", strings.Split(s.host, ":")[0])
	h.Set("X-GitHub-Enterprise-Version", "3.14.0")
	h.Set("X-Hub-Signature-256", Sign(secret, d.Body))
	h.Set("X-Hub-Signature", signSHA1(secret, d.Body))

	start := time.Now()
	resp, err := s.hooks.Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("delivering %s webhook to %s: %w", d.Event, target, err)
	}
	defer func() { _ = resp.Body.Close() }()
	respBody, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return resp.StatusCode, "", fmt.Errorf("reading %s webhook response: %w", d.Event, err)
	}
	s.logf("vcssim: delivered %s.%s %s to %s: %d in %s", d.Event, d.Action, d.ID, target, resp.StatusCode, time.Since(start).Round(time.Millisecond))
	return resp.StatusCode, string(respBody), nil
}
