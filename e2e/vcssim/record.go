package vcssim

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Comment is a pull request comment, whether Atlantis posted it through the
// API or the harness sent it with SendComment.
type Comment struct {
	ID              int64
	NodeID          string
	Repo            string // "owner/name"
	PR              int
	Author          string
	Body            string
	CreatedAt       time.Time
	UpdatedAt       time.Time
	Minimized       bool   // hidden through GraphQL minimizeComment
	MinimizedReason string // e.g. "OUTDATED"
	Reactions       []string
	// Client and MinimizedBy name the clients (Sim.ClientToken) that posted
	// and hid the comment; "" for Token or a comment the harness sent.
	Client      string
	MinimizedBy string
}

// Status is a commit status posted through the statuses API.
type Status struct {
	ID          int64
	Repo        string // "owner/name"
	SHA         string
	Context     string
	State       string // pending, success, failure, error
	Description string
	TargetURL   string
	Creator     string
	// Client names the client that set the status (Sim.ClientToken).
	Client    string
	CreatedAt time.Time
}

// Request is one HTTP request the Sim served.
type Request struct {
	Method   string
	Path     string
	Query    string
	Status   int
	Unknown  bool   // no handler: answered 404 (or a GraphQL error)
	Detail   string // for unknown GraphQL operations, the operation text
	Duration time.Duration
	Time     time.Time
	// Client names the client whose credential the request carried
	// (Sim.ClientToken).
	Client string
}

func (r Request) String() string {
	s := r.Method + " " + r.Path
	if r.Detail != "" {
		s += " [" + r.Detail + "]"
	}
	return fmt.Sprintf("%s -> %d", s, r.Status)
}

func (s *Sim) record(r Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = append(s.requests, r)
}

// Requests returns every request served so far, in order.
func (s *Sim) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// UnknownRequests returns the requests no handler implemented.
func (s *Sim) UnknownRequests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Request
	for _, r := range s.requests {
		if r.Unknown {
			out = append(out, r)
		}
	}
	return out
}

// addComment must be called with s.mu held.
func (s *Sim) addComment(repo string, pr int, author, body string) *Comment {
	id := s.newID()
	now := time.Now().UTC()
	c := &Comment{
		ID:        id,
		NodeID:    nodeID("IC", id),
		Repo:      repo,
		PR:        pr,
		Author:    author,
		Body:      body,
		CreatedAt: now,
		UpdatedAt: now,
	}
	s.comments = append(s.comments, c)
	return c
}

// findComment must be called with s.mu held.
func (s *Sim) findComment(repo string, id int64) (*Comment, int) {
	for i, c := range s.comments {
		if c.ID == id && strings.EqualFold(c.Repo, repo) {
			return c, i
		}
	}
	return nil, -1
}

// countComments must be called with s.mu held.
func (s *Sim) countComments(repo string, pr int) int {
	n := 0
	for _, c := range s.comments {
		if c.PR == pr && strings.EqualFold(c.Repo, repo) {
			n++
		}
	}
	return n
}

func copyComment(c *Comment) Comment {
	out := *c
	out.Reactions = append([]string(nil), c.Reactions...)
	return out
}

// Comments returns the comments on repo ("owner/name") pull request pr, in
// the order they were created, including the ones the harness sent.
func (s *Sim) Comments(repo string, pr int) []Comment {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Comment
	for _, c := range s.comments {
		if c.PR == pr && strings.EqualFold(c.Repo, repo) {
			out = append(out, copyComment(c))
		}
	}
	return out
}

// Statuses returns the commit statuses posted for sha in repo, oldest
// first. An empty sha returns the statuses of every commit.
func (s *Sim) Statuses(repo, sha string) []Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Status
	for _, st := range s.statuses {
		if strings.EqualFold(st.Repo, repo) && (sha == "" || st.SHA == sha) {
			out = append(out, st)
		}
	}
	return out
}

// pollInterval is how often the Wait helpers re-check the record.
const pollInterval = 25 * time.Millisecond

// WaitForComment blocks until a comment on repo#pr satisfies match (an
// existing one counts) or ctx ends. The error lists the comments seen, which
// is usually what explains a failing end-to-end test.
func (s *Sim) WaitForComment(ctx context.Context, repo string, pr int, match func(Comment) bool) (Comment, error) {
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		comments := s.Comments(repo, pr)
		for _, c := range comments {
			if match == nil || match(c) {
				return c, nil
			}
		}
		select {
		case <-ctx.Done():
			var seen []string
			for _, c := range comments {
				first, _, _ := strings.Cut(c.Body, "\n")
				seen = append(seen, fmt.Sprintf("#%d by %s: %.120q", c.ID, c.Author, first))
			}
			return Comment{}, fmt.Errorf("waiting for comment on %s#%d: %w; %d comments seen: [%s]",
				repo, pr, ctx.Err(), len(comments), strings.Join(seen, "; "))
		case <-ticker.C:
		}
	}
}

// WaitForStatus blocks until a commit status for sha satisfies match or ctx
// ends.
func (s *Sim) WaitForStatus(ctx context.Context, repo, sha string, match func(Status) bool) (Status, error) {
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		statuses := s.Statuses(repo, sha)
		for _, st := range statuses {
			if match == nil || match(st) {
				return st, nil
			}
		}
		select {
		case <-ctx.Done():
			var seen []string
			for _, st := range statuses {
				seen = append(seen, fmt.Sprintf("%s=%s (%s)", st.Context, st.State, st.Description))
			}
			return Status{}, fmt.Errorf("waiting for status on %s@%s: %w; statuses seen: [%s]",
				repo, sha, ctx.Err(), strings.Join(seen, "; "))
		case <-ticker.C:
		}
	}
}
