package vcssim

import (
	"encoding/base64"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-github/v88/github"
)

// Repo is a repository hosted by the Sim. It is a snapshot; the Sim keeps
// the authoritative copy.
type Repo struct {
	ID            int64
	Owner         string
	Name          string
	FullName      string // "owner/name"
	DefaultBranch string
	CloneURL      string // https://HOST/owner/name.git
	HTMLURL       string
	CreatedAt     time.Time
}

// PullRequest is a snapshot of a pull request hosted by the Sim. Methods
// that take a *PullRequest only use Repo.FullName and Number to find the
// current state, so a stale snapshot is fine to pass around.
type PullRequest struct {
	Repo           *Repo
	ID             int64
	Number         int
	Title          string
	Body           string
	Author         string
	HeadRef        string // branch name
	HeadSHA        string
	BaseRef        string
	BaseSHA        string // tip of the base branch when the PR was opened
	State          string // "open" or "closed"
	Draft          bool
	Merged         bool
	MergeCommitSHA string
	// MergeableState is what the pulls API reports: "clean" by default;
	// "blocked", "dirty", "unstable", ... make Atlantis's mergeable
	// requirement fail or pass the way it would on GitHub.
	MergeableState string
	Labels         []string
	CreatedAt      time.Time
	UpdatedAt      time.Time
	ClosedAt       time.Time
}

type repoState struct {
	repo  Repo
	git   gitRepo
	pulls map[int]*pullState
}

type pullState struct {
	pr          PullRequest
	previousSHA string // head before the last push, for "synchronize"
	mergedBy    string
	reviews     []*review
}

type review struct {
	ID          int64
	NodeID      string
	User        string
	State       string // APPROVED, CHANGES_REQUESTED, COMMENTED, DISMISSED
	Body        string
	CommitID    string
	SubmittedAt time.Time
}

func (p *pullState) snapshot(repo Repo) *PullRequest {
	pr := p.pr
	r := repo
	pr.Repo = &r
	pr.Labels = append([]string(nil), p.pr.Labels...)
	return &pr
}

// repoKey is case-insensitive like GitHub's owner/name lookup.
func repoKey(fullName string) string { return strings.ToLower(fullName) }

// lookupRepo must be called with s.mu held.
func (s *Sim) lookupRepo(owner, name string) (*repoState, bool) {
	rs, ok := s.repos[repoKey(owner+"/"+name)]
	// A nil entry is a name reserved by an in-flight CreateRepo.
	return rs, ok && rs != nil
}

// lookupPull must be called with s.mu held.
func (s *Sim) lookupPull(pr *PullRequest) (*repoState, *pullState, error) {
	if pr == nil || pr.Repo == nil {
		return nil, nil, fmt.Errorf("pull request or its repo is nil")
	}
	rs, ok := s.repos[repoKey(pr.Repo.FullName)]
	if !ok || rs == nil {
		return nil, nil, fmt.Errorf("repo %q does not exist", pr.Repo.FullName)
	}
	ps, ok := rs.pulls[pr.Number]
	if !ok {
		return nil, nil, fmt.Errorf("pull request %s#%d does not exist", pr.Repo.FullName, pr.Number)
	}
	return rs, ps, nil
}

// newID hands out GitHub-style numeric IDs; must be called with s.mu held.
func (s *Sim) newID() int64 {
	s.nextID++
	return s.nextID
}

// nodeID builds an opaque GraphQL node ID. Atlantis passes comment node IDs
// back in minimizeComment, so they must be unique and resolvable.
func nodeID(prefix string, id int64) string {
	return prefix + "_" + base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, "vcssim:%d", id))
}

// ghUser must be called with s.mu held; it assigns stable IDs per login.
func (s *Sim) ghUser(login string) *github.User {
	id, ok := s.users[strings.ToLower(login)]
	if !ok {
		id = s.newID()
		s.users[strings.ToLower(login)] = id
	}
	return &github.User{
		Login:     github.Ptr(login),
		ID:        github.Ptr(id),
		NodeID:    github.Ptr(nodeID("U", id)),
		Type:      github.Ptr("User"),
		SiteAdmin: github.Ptr(false),
		URL:       github.Ptr(s.APIURL() + "users/" + login),
		HTMLURL:   github.Ptr(s.URL() + "/" + login),
		AvatarURL: github.Ptr(s.URL() + "/avatars/u/" + fmt.Sprint(id)),
	}
}

// ghOwner describes repo owners as organizations, since Atlantis looks up
// team membership in the owner organization.
func (s *Sim) ghOwner(login string) *github.User {
	u := s.ghUser(login)
	u.Type = github.Ptr("Organization")
	u.NodeID = github.Ptr(nodeID("O", u.GetID()))
	return u
}

func (s *Sim) ghOrganization(login string) *github.Organization {
	u := s.ghOwner(login)
	return &github.Organization{
		Login:  u.Login,
		ID:     u.ID,
		NodeID: u.NodeID,
		URL:    github.Ptr(s.APIURL() + "orgs/" + login),
	}
}

// ghRepo must be called with s.mu held.
func (s *Sim) ghRepo(r Repo) *github.Repository {
	api := s.APIURL() + "repos/" + r.FullName
	ts := &github.Timestamp{Time: r.CreatedAt}
	return &github.Repository{
		ID:               github.Ptr(r.ID),
		NodeID:           github.Ptr(nodeID("R", r.ID)),
		Name:             github.Ptr(r.Name),
		FullName:         github.Ptr(r.FullName),
		Owner:            s.ghOwner(r.Owner),
		Private:          github.Ptr(true),
		Visibility:       github.Ptr("private"),
		Fork:             github.Ptr(false),
		HTMLURL:          github.Ptr(r.HTMLURL),
		URL:              github.Ptr(api),
		CloneURL:         github.Ptr(r.CloneURL),
		GitURL:           github.Ptr("git://" + s.host + "/" + r.FullName + ".git"),
		SSHURL:           github.Ptr("git@" + strings.Split(s.host, ":")[0] + ":" + r.FullName + ".git"),
		SVNURL:           github.Ptr(r.HTMLURL),
		PullsURL:         github.Ptr(api + "/pulls{/number}"),
		IssuesURL:        github.Ptr(api + "/issues{/number}"),
		StatusesURL:      github.Ptr(api + "/statuses/{sha}"),
		DefaultBranch:    github.Ptr(r.DefaultBranch),
		AllowMergeCommit: github.Ptr(true),
		AllowSquashMerge: github.Ptr(true),
		AllowRebaseMerge: github.Ptr(true),
		Archived:         github.Ptr(false),
		Disabled:         github.Ptr(false),
		CreatedAt:        ts,
		UpdatedAt:        ts,
		PushedAt:         ts,
	}
}

// ghPull renders a pull request. fromWebhook reproduces GitHub computing
// mergeability lazily: webhook payloads carry mergeable=null and
// mergeable_state="unknown", the REST API the computed value.
func (s *Sim) ghPull(rs *repoState, ps *pullState, fromWebhook bool) *github.PullRequest {
	pr := ps.pr
	repo := s.ghRepo(rs.repo)
	api := s.APIURL() + "repos/" + rs.repo.FullName
	htmlURL := fmt.Sprintf("%s/pull/%d", rs.repo.HTMLURL, pr.Number)

	var labels []*github.Label
	for _, l := range pr.Labels {
		labels = append(labels, &github.Label{
			Name:  github.Ptr(l),
			Color: github.Ptr("ededed"),
		})
	}

	out := &github.PullRequest{
		ID:                github.Ptr(pr.ID),
		NodeID:            github.Ptr(nodeID("PR", pr.ID)),
		Number:            github.Ptr(pr.Number),
		State:             github.Ptr(pr.State),
		Locked:            github.Ptr(false),
		Title:             github.Ptr(pr.Title),
		Body:              github.Ptr(pr.Body),
		User:              s.ghUser(pr.Author),
		Labels:            labels,
		Draft:             github.Ptr(pr.Draft),
		Merged:            github.Ptr(pr.Merged),
		AuthorAssociation: github.Ptr("MEMBER"),
		CreatedAt:         &github.Timestamp{Time: pr.CreatedAt},
		UpdatedAt:         &github.Timestamp{Time: pr.UpdatedAt},
		URL:               github.Ptr(fmt.Sprintf("%s/pulls/%d", api, pr.Number)),
		HTMLURL:           github.Ptr(htmlURL),
		DiffURL:           github.Ptr(htmlURL + ".diff"),
		PatchURL:          github.Ptr(htmlURL + ".patch"),
		IssueURL:          github.Ptr(fmt.Sprintf("%s/issues/%d", api, pr.Number)),
		CommentsURL:       github.Ptr(fmt.Sprintf("%s/issues/%d/comments", api, pr.Number)),
		CommitsURL:        github.Ptr(fmt.Sprintf("%s/pulls/%d/commits", api, pr.Number)),
		StatusesURL:       github.Ptr(fmt.Sprintf("%s/statuses/%s", api, pr.HeadSHA)),
		Comments:          github.Ptr(s.countComments(rs.repo.FullName, pr.Number)),
		Head: &github.PullRequestBranch{
			Label: github.Ptr(rs.repo.Owner + ":" + pr.HeadRef),
			Ref:   github.Ptr(pr.HeadRef),
			SHA:   github.Ptr(pr.HeadSHA),
			Repo:  repo,
			User:  s.ghOwner(rs.repo.Owner),
		},
		Base: &github.PullRequestBranch{
			Label: github.Ptr(rs.repo.Owner + ":" + pr.BaseRef),
			Ref:   github.Ptr(pr.BaseRef),
			SHA:   github.Ptr(pr.BaseSHA),
			Repo:  repo,
			User:  s.ghOwner(rs.repo.Owner),
		},
	}
	if fromWebhook && pr.State == "open" {
		out.MergeableState = github.Ptr("unknown")
	} else {
		out.MergeableState = github.Ptr(pr.MergeableState)
		out.Mergeable = github.Ptr(pr.MergeableState != "dirty")
	}
	if pr.State == "closed" {
		out.ClosedAt = &github.Timestamp{Time: pr.ClosedAt}
	}
	if pr.Merged {
		out.MergedAt = &github.Timestamp{Time: pr.ClosedAt}
		out.MergeCommitSHA = github.Ptr(pr.MergeCommitSHA)
		out.MergedBy = s.ghUser(ps.mergedBy)
	}
	return out
}

// ghIssue renders the issue half of a pull request, as carried by
// issue_comment webhooks.
func (s *Sim) ghIssue(rs *repoState, ps *pullState) *github.Issue {
	pull := s.ghPull(rs, ps, true)
	return &github.Issue{
		ID:                pull.ID,
		NodeID:            github.Ptr(nodeID("I", ps.pr.ID)),
		Number:            pull.Number,
		State:             pull.State,
		Locked:            pull.Locked,
		Title:             pull.Title,
		Body:              pull.Body,
		User:              pull.User,
		Labels:            pull.Labels,
		Draft:             pull.Draft,
		Comments:          pull.Comments,
		AuthorAssociation: pull.AuthorAssociation,
		CreatedAt:         pull.CreatedAt,
		UpdatedAt:         pull.UpdatedAt,
		ClosedAt:          pull.ClosedAt,
		URL:               pull.IssueURL,
		HTMLURL:           pull.HTMLURL,
		CommentsURL:       pull.CommentsURL,
		RepositoryURL:     github.Ptr(s.APIURL() + "repos/" + rs.repo.FullName),
		PullRequestLinks: &github.PullRequestLinks{
			URL:      pull.URL,
			HTMLURL:  pull.HTMLURL,
			DiffURL:  pull.DiffURL,
			PatchURL: pull.PatchURL,
		},
	}
}

// ghComment must be called with s.mu held.
func (s *Sim) ghComment(c *Comment) *github.IssueComment {
	api := s.APIURL() + "repos/" + c.Repo
	return &github.IssueComment{
		ID:        github.Ptr(c.ID),
		NodeID:    github.Ptr(c.NodeID),
		Body:      github.Ptr(c.Body),
		User:      s.ghUser(c.Author),
		CreatedAt: &github.Timestamp{Time: c.CreatedAt},
		UpdatedAt: &github.Timestamp{Time: c.UpdatedAt},
		URL:       github.Ptr(fmt.Sprintf("%s/issues/comments/%d", api, c.ID)),
		HTMLURL:   github.Ptr(fmt.Sprintf("%s/%s/pull/%d#issuecomment-%d", s.URL(), c.Repo, c.PR, c.ID)),
		IssueURL:  github.Ptr(fmt.Sprintf("%s/issues/%d", api, c.PR)),
	}
}
