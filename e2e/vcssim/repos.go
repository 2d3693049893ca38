package vcssim

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// defaultBranch is the base branch of every repository the Sim creates.
const defaultBranch = "main"

// validName mirrors GitHub's allowed characters for owners and repos.
var validName = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

func checkName(kind, name string) error {
	if !validName.MatchString(name) || name == "." || name == ".." || strings.HasSuffix(strings.ToLower(name), ".git") {
		return fmt.Errorf("invalid %s name %q", kind, name)
	}
	return nil
}

// CreateRepo creates a bare repository with one commit on main holding
// files (path -> content). A repo without files gets a README, because
// GitHub repos that Atlantis can plan always have a default branch.
func (s *Sim) CreateRepo(owner, name string, files map[string]string) (*Repo, error) {
	if err := checkName("owner", owner); err != nil {
		return nil, err
	}
	if err := checkName("repo", name); err != nil {
		return nil, err
	}
	if len(files) == 0 {
		files = map[string]string{"README.md": "# " + name + "\n"}
	}
	fullName := owner + "/" + name

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errors.New("sim is closed")
	}
	if _, exists := s.repos[repoKey(fullName)]; exists {
		s.mu.Unlock()
		return nil, fmt.Errorf("repo %q already exists", fullName)
	}
	// Reserve the name so a concurrent CreateRepo fails instead of racing
	// on the same directory; the git work happens without the lock.
	s.repos[repoKey(fullName)] = nil
	id := s.newID()
	s.mu.Unlock()

	repo, rs, err := s.buildRepo(id, owner, name, files)

	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		delete(s.repos, repoKey(fullName))
		return nil, err
	}
	s.repos[repoKey(fullName)] = rs
	s.logf("vcssim: created repo %s at %s", fullName, repo.CloneURL)
	r := *repo
	return &r, nil
}

func (s *Sim) buildRepo(id int64, owner, name string, files map[string]string) (*Repo, *repoState, error) {
	dir := filepath.Join(s.reposDir, owner, name+".git")
	g, err := initBareRepo(dir, s.dir, defaultBranch)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now().UTC().Truncate(time.Second)
	sha, err := g.commitFiles("", files, "Initial commit", commitAuthor{login: owner, host: s.host, when: now})
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, nil, fmt.Errorf("creating initial commit: %w", err)
	}
	if err := g.updateRef("refs/heads/"+defaultBranch, sha, ""); err != nil {
		_ = os.RemoveAll(dir)
		return nil, nil, err
	}
	repo := &Repo{
		ID:            id,
		Owner:         owner,
		Name:          name,
		FullName:      owner + "/" + name,
		DefaultBranch: defaultBranch,
		CloneURL:      s.URL() + "/" + owner + "/" + name + ".git",
		HTMLURL:       s.URL() + "/" + owner + "/" + name,
		CreatedAt:     now,
	}
	return repo, &repoState{repo: *repo, git: g, pulls: map[int]*pullState{}}, nil
}

// OpenPullRequest commits files onto branch (created from main, or extended
// if it already exists) and registers pull request number as open with
// base main and mergeable state "clean". Send the webhook with
// SendPullRequestOpened.
func (s *Sim) OpenPullRequest(repo *Repo, number int, branch string, files map[string]string, author string) (*PullRequest, error) {
	if repo == nil {
		return nil, errors.New("repo is nil")
	}
	if number <= 0 {
		return nil, fmt.Errorf("invalid pull request number %d", number)
	}
	if err := validBranchName(branch); err != nil {
		return nil, err
	}
	if branch == defaultBranch {
		return nil, fmt.Errorf("branch %q is the base branch", branch)
	}
	if len(files) == 0 {
		return nil, errors.New("a pull request needs at least one changed file")
	}
	if author == "" {
		return nil, errors.New("author is required")
	}

	s.gitMu.Lock()
	defer s.gitMu.Unlock()

	s.mu.Lock()
	rs, ok := s.repos[repoKey(repo.FullName)]
	if !ok || rs == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("repo %q does not exist", repo.FullName)
	}
	if _, exists := rs.pulls[number]; exists {
		s.mu.Unlock()
		return nil, fmt.Errorf("pull request %s#%d already exists", repo.FullName, number)
	}
	g := rs.git
	s.mu.Unlock()

	baseSHA := g.resolve("refs/heads/" + defaultBranch)
	if baseSHA == "" {
		return nil, fmt.Errorf("repo %q has no %s branch", repo.FullName, defaultBranch)
	}
	oldHead := g.resolve("refs/heads/" + branch)
	parent := oldHead
	if parent == "" {
		parent = baseSHA
	}
	now := time.Now().UTC().Truncate(time.Second)
	headSHA, err := g.commitFiles(parent, files, fmt.Sprintf("Changes for #%d", number), commitAuthor{login: author, host: s.host, when: now})
	if err != nil {
		return nil, fmt.Errorf("committing pull request files: %w", err)
	}
	if err := g.updateRef("refs/heads/"+branch, headSHA, oldHead); err != nil {
		return nil, err
	}
	// GitHub exposes every pull request's head as refs/pull/N/head; Atlantis
	// fetches it in GitHub App mode.
	if err := g.updateRef(fmt.Sprintf("refs/pull/%d/head", number), headSHA, ""); err != nil {
		return nil, err
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	ps := &pullState{pr: PullRequest{
		ID:             s.newID(),
		Number:         number,
		Title:          fmt.Sprintf("Update %s", branch),
		Body:           fmt.Sprintf("Pull request created by vcssim from branch %s.", branch),
		Author:         author,
		HeadRef:        branch,
		HeadSHA:        headSHA,
		BaseRef:        defaultBranch,
		BaseSHA:        baseSHA,
		State:          "open",
		MergeableState: "clean",
		CreatedAt:      now,
		UpdatedAt:      now,
	}}
	rs.pulls[number] = ps
	s.logf("vcssim: opened %s#%d %s -> %s at %s", repo.FullName, number, branch, defaultBranch, headSHA)
	return ps.snapshot(rs.repo), nil
}

// UpdatePullRequest pushes a new commit with files onto the pull request's
// branch, as a developer pushing more changes would. Send the webhook with
// SendPullRequestSynchronize.
func (s *Sim) UpdatePullRequest(pr *PullRequest, files map[string]string) (*PullRequest, error) {
	if len(files) == 0 {
		return nil, errors.New("no files to push")
	}
	s.gitMu.Lock()
	defer s.gitMu.Unlock()

	s.mu.Lock()
	rs, ps, err := s.lookupPull(pr)
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	if ps.pr.State != "open" {
		s.mu.Unlock()
		return nil, fmt.Errorf("pull request %s#%d is closed", rs.repo.FullName, ps.pr.Number)
	}
	g, branch, oldHead, login, number := rs.git, ps.pr.HeadRef, ps.pr.HeadSHA, ps.pr.Author, ps.pr.Number
	s.mu.Unlock()

	now := time.Now().UTC().Truncate(time.Second)
	headSHA, err := g.commitFiles(oldHead, files, fmt.Sprintf("More changes for #%d", number), commitAuthor{login: login, host: s.host, when: now})
	if err != nil {
		return nil, fmt.Errorf("committing pull request files: %w", err)
	}
	if err := g.updateRef("refs/heads/"+branch, headSHA, oldHead); err != nil {
		return nil, err
	}
	if err := g.updateRef(fmt.Sprintf("refs/pull/%d/head", number), headSHA, oldHead); err != nil {
		return nil, err
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	ps.previousSHA = oldHead
	ps.pr.HeadSHA = headSHA
	ps.pr.UpdatedAt = now
	s.logf("vcssim: pushed %s to %s#%d", headSHA, rs.repo.FullName, number)
	return ps.snapshot(rs.repo), nil
}

// PullRequest returns the current state of repo#number (repo is
// "owner/name").
func (s *Sim) PullRequest(repo string, number int) (*PullRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs, ok := s.repos[repoKey(repo)]
	if !ok || rs == nil {
		return nil, fmt.Errorf("repo %q does not exist", repo)
	}
	ps, ok := rs.pulls[number]
	if !ok {
		return nil, fmt.Errorf("pull request %s#%d does not exist", repo, number)
	}
	return ps.snapshot(rs.repo), nil
}

// SetMergeableState changes what the pulls API reports as mergeable_state,
// e.g. "blocked" to make Atlantis's mergeable apply requirement fail.
func (s *Sim) SetMergeableState(pr *PullRequest, state string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ps, err := s.lookupPull(pr)
	if err != nil {
		return err
	}
	ps.pr.MergeableState = state
	return nil
}

// SetLabels replaces the pull request's labels.
func (s *Sim) SetLabels(pr *PullRequest, labels ...string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ps, err := s.lookupPull(pr)
	if err != nil {
		return err
	}
	ps.pr.Labels = append([]string(nil), labels...)
	return nil
}

// ApprovePullRequest records an approving review by reviewer on the current
// head, which satisfies Atlantis's "approved" apply requirement.
func (s *Sim) ApprovePullRequest(pr *PullRequest, reviewer string) error {
	if reviewer == "" {
		return errors.New("reviewer is required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ps, err := s.lookupPull(pr)
	if err != nil {
		return err
	}
	id := s.newID()
	ps.reviews = append(ps.reviews, &review{
		ID:          id,
		NodeID:      nodeID("PRR", id),
		User:        reviewer,
		State:       "APPROVED",
		CommitID:    ps.pr.HeadSHA,
		SubmittedAt: time.Now().UTC().Truncate(time.Second),
	})
	return nil
}

// mergePull merges an open pull request into its base branch for real, so
// later pull requests build on it. method is "merge", "squash" or "rebase".
func (s *Sim) mergePull(pr *PullRequest, method, mergedBy string) (string, error) {
	s.gitMu.Lock()
	defer s.gitMu.Unlock()

	s.mu.Lock()
	rs, ps, err := s.lookupPull(pr)
	if err != nil {
		s.mu.Unlock()
		return "", err
	}
	if ps.pr.State != "open" {
		s.mu.Unlock()
		return "", fmt.Errorf("pull request %s#%d is not open", rs.repo.FullName, ps.pr.Number)
	}
	g, base, head, headRef, number, title := rs.git, ps.pr.BaseRef, ps.pr.HeadSHA, ps.pr.HeadRef, ps.pr.Number, ps.pr.Title
	s.mu.Unlock()

	baseSHA := g.resolve("refs/heads/" + base)
	if baseSHA == "" {
		return "", fmt.Errorf("base branch %q does not exist", base)
	}
	now := time.Now().UTC().Truncate(time.Second)
	msg := fmt.Sprintf("Merge pull request #%d from %s\n\n%s", number, headRef, title)
	if method != "merge" {
		msg = fmt.Sprintf("%s (#%d)", title, number)
	}
	sha, err := g.mergeCommit(baseSHA, head, method, msg, commitAuthor{login: mergedBy, host: s.host, when: now})
	if err != nil {
		return "", err
	}
	if err := g.updateRef("refs/heads/"+base, sha, baseSHA); err != nil {
		return "", err
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	ps.pr.State = "closed"
	ps.pr.Merged = true
	ps.pr.MergeCommitSHA = sha
	ps.pr.ClosedAt = now
	ps.pr.UpdatedAt = now
	ps.mergedBy = mergedBy
	s.logf("vcssim: merged %s#%d into %s as %s", rs.repo.FullName, number, base, sha)
	return sha, nil
}

// closePull marks an open pull request closed without merging.
// ClosePullRequest closes pr on GitHub without sending its webhook, as when
// the delivery was lost.
func (s *Sim) ClosePullRequest(pr *PullRequest) error {
	return s.closePull(pr)
}

func (s *Sim) closePull(pr *PullRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ps, err := s.lookupPull(pr)
	if err != nil {
		return err
	}
	if ps.pr.State == "open" {
		now := time.Now().UTC().Truncate(time.Second)
		ps.pr.State = "closed"
		ps.pr.ClosedAt = now
		ps.pr.UpdatedAt = now
	}
	return nil
}
