package vcssim

import (
	"fmt"
	"net/http"

	"github.com/google/go-github/v88/github"
)

// pullFromPath resolves {owner}/{repo}/.../{number}, answering 404 when it
// is unknown; must be called with s.mu held. Atlantis retries 404s on these
// endpoints with back-off, so a wrong number shows up as a slow failure; the
// request log names it.
func (s *Sim) pullFromPath(w http.ResponseWriter, r *http.Request) (*repoState, *pullState, bool) {
	n, ok := pathInt(w, r, "number")
	if !ok {
		return nil, nil, false
	}
	rs, found := s.lookupRepo(r.PathValue("owner"), r.PathValue("repo"))
	if !found {
		writeError(w, http.StatusNotFound, "Not Found")
		return nil, nil, false
	}
	ps, found := rs.pulls[int(n)]
	if !found {
		writeError(w, http.StatusNotFound, "Not Found")
		return nil, nil, false
	}
	return rs, ps, true
}

// getPull serves GET /repos/{owner}/{repo}/pulls/{number}: Atlantis reads
// the head for comment commands, and draft/mergeable_state for the
// mergeable requirement.
func (s *Sim) getPull(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	rs, ps, ok := s.pullFromPath(w, r)
	if !ok {
		s.mu.Unlock()
		return
	}
	out := s.ghPull(rs, ps, false)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

// listPullFiles serves GET /repos/{owner}/{repo}/pulls/{number}/files,
// computed with git from the real commits, which decides what Atlantis plans.
func (s *Sim) listPullFiles(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	rs, ps, ok := s.pullFromPath(w, r)
	if !ok {
		s.mu.Unlock()
		return
	}
	g, base, head, fullName := rs.git, ps.pr.BaseSHA, ps.pr.HeadSHA, rs.repo.FullName
	s.mu.Unlock()

	changes, err := g.changedFiles(base, head)
	if err != nil {
		writeError(w, http.StatusInternalServerError, fmt.Sprintf("listing changed files: %s", err))
		return
	}
	// GitHub stops listing at 3000 files.
	if len(changes) > 3000 {
		changes = changes[:3000]
	}
	lo, hi := s.paginate(w, r, len(changes))
	out := []*github.CommitFile{}
	for _, c := range changes[lo:hi] {
		f := &github.CommitFile{
			Filename:    github.Ptr(c.Filename),
			Status:      github.Ptr(c.Status),
			BlobURL:     github.Ptr(fmt.Sprintf("%s/%s/blob/%s/%s", s.URL(), fullName, head, c.Filename)),
			RawURL:      github.Ptr(fmt.Sprintf("%s/%s/raw/%s/%s", s.URL(), fullName, head, c.Filename)),
			ContentsURL: github.Ptr(fmt.Sprintf("%srepos/%s/contents/%s?ref=%s", s.APIURL(), fullName, c.Filename, head)),
		}
		if c.SHA != "" {
			f.SHA = github.Ptr(c.SHA)
		}
		if c.PreviousFilename != "" {
			f.PreviousFilename = github.Ptr(c.PreviousFilename)
		}
		out = append(out, f)
	}
	writeJSON(w, http.StatusOK, out)
}

// listReviews serves GET /repos/{owner}/{repo}/pulls/{number}/reviews,
// which Atlantis reads for the approved requirement on every plan/apply.
func (s *Sim) listReviews(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs, ps, ok := s.pullFromPath(w, r)
	if !ok {
		return
	}
	lo, hi := s.paginate(w, r, len(ps.reviews))
	out := []*github.PullRequestReview{}
	for _, rv := range ps.reviews[lo:hi] {
		out = append(out, &github.PullRequestReview{
			ID:                github.Ptr(rv.ID),
			NodeID:            github.Ptr(rv.NodeID),
			User:              s.ghUser(rv.User),
			Body:              github.Ptr(rv.Body),
			State:             github.Ptr(rv.State),
			CommitID:          github.Ptr(rv.CommitID),
			SubmittedAt:       &github.Timestamp{Time: rv.SubmittedAt},
			AuthorAssociation: github.Ptr("MEMBER"),
			HTMLURL:           github.Ptr(fmt.Sprintf("%s/pull/%d#pullrequestreview-%d", rs.repo.HTMLURL, ps.pr.Number, rv.ID)),
			PullRequestURL:    github.Ptr(fmt.Sprintf("%srepos/%s/pulls/%d", s.APIURL(), rs.repo.FullName, ps.pr.Number)),
		})
	}
	writeJSON(w, http.StatusOK, out)
}

// mergePullRequest serves PUT /repos/{owner}/{repo}/pulls/{number}/merge
// (Atlantis automerge). The merge really happens in git.
func (s *Sim) mergePullRequest(w http.ResponseWriter, r *http.Request) {
	var in struct {
		CommitTitle   string `json:"commit_title"`
		CommitMessage string `json:"commit_message"`
		SHA           string `json:"sha"`
		MergeMethod   string `json:"merge_method"`
	}
	if r.ContentLength != 0 {
		if err := readJSON(r, &in); err != nil {
			writeError(w, http.StatusBadRequest, "Problems parsing JSON")
			return
		}
	}
	if in.MergeMethod == "" {
		in.MergeMethod = "merge"
	}
	if in.MergeMethod != "merge" && in.MergeMethod != "squash" && in.MergeMethod != "rebase" {
		writeError(w, http.StatusUnprocessableEntity, "Validation Failed",
			apiErrorDetail{Resource: "PullRequest", Field: "merge_method", Code: "invalid"})
		return
	}

	s.mu.Lock()
	rs, ps, ok := s.pullFromPath(w, r)
	if !ok {
		s.mu.Unlock()
		return
	}
	snapshot := ps.snapshot(rs.repo)
	s.mu.Unlock()

	switch {
	case snapshot.State != "open" || snapshot.Draft || snapshot.MergeableState == "dirty" || snapshot.MergeableState == "blocked":
		writeError(w, http.StatusMethodNotAllowed, "Pull Request is not mergeable")
		return
	case in.SHA != "" && in.SHA != snapshot.HeadSHA:
		writeError(w, http.StatusConflict, "Head branch was modified. Review and try the merge again.")
		return
	}

	sha, err := s.mergePull(snapshot, in.MergeMethod, requestLogin(r))
	if err != nil {
		s.logf("vcssim: merging %s#%d: %s", snapshot.Repo.FullName, snapshot.Number, err)
		writeError(w, http.StatusMethodNotAllowed, "Pull Request is not mergeable")
		return
	}
	writeJSON(w, http.StatusOK, &github.PullRequestMergeResult{
		SHA:     github.Ptr(sha),
		Merged:  github.Ptr(true),
		Message: github.Ptr("Pull Request successfully merged"),
	})
}
