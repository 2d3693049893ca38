package vcssim

import (
	"encoding/base64"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/google/go-github/v88/github"
)

// repoFromPath resolves {owner}/{repo}, answering 404 when it is unknown.
// GitHub answers 404 rather than 403 for private repos one cannot see.
func (s *Sim) repoFromPath(w http.ResponseWriter, r *http.Request) (Repo, gitRepo, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs, ok := s.lookupRepo(r.PathValue("owner"), r.PathValue("repo"))
	if !ok {
		writeError(w, http.StatusNotFound, "Not Found")
		return Repo{}, gitRepo{}, false
	}
	return rs.repo, rs.git, true
}

// getRepo serves GET /repos/{owner}/{repo}; Atlantis reads the allowed
// merge methods before automerging and the clone URL for API-triggered runs.
func (s *Sim) getRepo(w http.ResponseWriter, r *http.Request) {
	repo, _, ok := s.repoFromPath(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	out := s.ghRepo(repo)
	s.mu.Unlock()
	out.Permissions = &github.RepositoryPermissions{
		Admin: github.Ptr(true), Maintain: github.Ptr(true), Push: github.Ptr(true),
		Triage: github.Ptr(true), Pull: github.Ptr(true),
	}
	writeJSON(w, http.StatusOK, out)
}

// getContents serves GET /repos/{owner}/{repo}/contents/{path}?ref=, which
// Atlantis uses to read atlantis.yaml without cloning.
func (s *Sim) getContents(w http.ResponseWriter, r *http.Request) {
	repo, g, ok := s.repoFromPath(w, r)
	if !ok {
		return
	}
	ref := r.URL.Query().Get("ref")
	if ref == "" {
		ref = repo.DefaultBranch
	}
	p := strings.Trim(r.PathValue("path"), "/")
	if g.resolve(ref) == "" {
		writeError(w, http.StatusNotFound, "No commit found for the ref "+ref)
		return
	}
	kind, sha, err := g.object(ref, p)
	if err != nil {
		writeError(w, http.StatusNotFound, "Not Found")
		return
	}
	api := s.APIURL() + "repos/" + repo.FullName
	entry := func(name, kind, sha string) *github.RepositoryContent {
		typ := "file"
		if kind == "tree" {
			typ = "dir"
		}
		full := strings.TrimPrefix(p+"/"+name, "/")
		if name == "" {
			full = p
			name = full[strings.LastIndex(full, "/")+1:]
		}
		return &github.RepositoryContent{
			Type:    github.Ptr(typ),
			Name:    github.Ptr(name),
			Path:    github.Ptr(full),
			SHA:     github.Ptr(sha),
			URL:     github.Ptr(api + "/contents/" + full + "?ref=" + ref),
			GitURL:  github.Ptr(api + "/git/blobs/" + sha),
			HTMLURL: github.Ptr(repo.HTMLURL + "/blob/" + ref + "/" + full),
		}
	}

	if kind == "tree" {
		entries, err := g.tree(sha)
		if err != nil {
			writeError(w, http.StatusInternalServerError, err.Error())
			return
		}
		out := []*github.RepositoryContent{}
		for _, e := range entries {
			out = append(out, entry(e.Name, e.Type, e.SHA))
		}
		writeJSON(w, http.StatusOK, out)
		return
	}

	data, err := g.blob(sha)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	out := entry("", kind, sha)
	out.Size = github.Ptr(len(data))
	out.Encoding = github.Ptr("base64")
	out.Content = github.Ptr(wrappedBase64(data))
	writeJSON(w, http.StatusOK, out)
}

// wrappedBase64 encodes like GitHub, with a newline every 60 characters;
// Atlantis strips them, and doing the same keeps that code path honest.
func wrappedBase64(data []byte) string {
	enc := base64.StdEncoding.EncodeToString(data)
	var b strings.Builder
	for len(enc) > 60 {
		b.WriteString(enc[:60])
		b.WriteByte('\n')
		enc = enc[60:]
	}
	b.WriteString(enc)
	b.WriteByte('\n')
	return b.String()
}

var hexSHA = regexp.MustCompile(`^[0-9a-f]{40}$`)

// getBlob serves GET /repos/{owner}/{repo}/git/blobs/{sha}, Atlantis's
// fallback for files too large for the contents API.
func (s *Sim) getBlob(w http.ResponseWriter, r *http.Request) {
	repo, g, ok := s.repoFromPath(w, r)
	if !ok {
		return
	}
	sha := strings.ToLower(r.PathValue("sha"))
	if !hexSHA.MatchString(sha) {
		writeError(w, http.StatusNotFound, "Not Found")
		return
	}
	if kind, err := g.run(nil, nil, "cat-file", "-t", sha); err != nil || kind != "blob" {
		writeError(w, http.StatusNotFound, "Not Found")
		return
	}
	data, err := g.blob(sha)
	if err != nil {
		writeError(w, http.StatusNotFound, "Not Found")
		return
	}
	writeJSON(w, http.StatusOK, &github.Blob{
		SHA:      github.Ptr(sha),
		Size:     github.Ptr(len(data)),
		Encoding: github.Ptr("base64"),
		Content:  github.Ptr(wrappedBase64(data)),
		URL:      github.Ptr(s.APIURL() + "repos/" + repo.FullName + "/git/blobs/" + sha),
		NodeID:   github.Ptr("B_" + sha),
	})
}

// createStatus serves POST /repos/{owner}/{repo}/statuses/{sha}, how
// Atlantis reports plan/apply progress. Like GitHub it rejects unknown
// commits and states, so a wrong SHA fails the test instead of vanishing.
func (s *Sim) createStatus(w http.ResponseWriter, r *http.Request) {
	repo, g, ok := s.repoFromPath(w, r)
	if !ok {
		return
	}
	var in github.RepoStatus
	if err := readJSON(r, &in); err != nil {
		writeError(w, http.StatusBadRequest, "Problems parsing JSON")
		return
	}
	sha := r.PathValue("sha")
	full := g.resolve(sha)
	if full == "" || !strings.HasPrefix(full, strings.ToLower(sha)) {
		writeError(w, http.StatusUnprocessableEntity, "No commit found for SHA: "+sha)
		return
	}
	switch in.GetState() {
	case "pending", "success", "failure", "error":
	default:
		writeError(w, http.StatusUnprocessableEntity, "Validation Failed",
			apiErrorDetail{Resource: "Status", Field: "state", Code: "custom", Message: "state is not included in the list"})
		return
	}
	ctxName := in.GetContext()
	if ctxName == "" {
		ctxName = "default"
	}

	s.mu.Lock()
	st := Status{
		ID:          s.newID(),
		Repo:        repo.FullName,
		SHA:         full,
		Context:     ctxName,
		State:       in.GetState(),
		Description: in.GetDescription(),
		TargetURL:   in.GetTargetURL(),
		Creator:     requestLogin(r),
		Client:      requestClient(r),
		CreatedAt:   time.Now().UTC(),
	}
	s.statuses = append(s.statuses, st)
	out := s.ghStatus(st)
	s.mu.Unlock()

	s.logf("vcssim: status %s@%.8s %s=%s %q", repo.FullName, full, st.Context, st.State, st.Description)
	writeJSON(w, http.StatusCreated, out)
}

// ghStatus must be called with s.mu held.
func (s *Sim) ghStatus(st Status) *github.RepoStatus {
	ts := &github.Timestamp{Time: st.CreatedAt}
	return &github.RepoStatus{
		ID:          github.Ptr(st.ID),
		NodeID:      github.Ptr(nodeID("SC", st.ID)),
		URL:         github.Ptr(s.APIURL() + "repos/" + st.Repo + "/statuses/" + st.SHA),
		State:       github.Ptr(st.State),
		TargetURL:   github.Ptr(st.TargetURL),
		Description: github.Ptr(st.Description),
		Context:     github.Ptr(st.Context),
		Creator:     s.ghUser(st.Creator),
		CreatedAt:   ts,
		UpdatedAt:   ts,
	}
}

// latestStatuses returns, newest first, the latest status per context for
// sha, which is what the combined status and GraphQL rollup report.
func (s *Sim) latestStatuses(repo, sha string) []Status {
	all := s.Statuses(repo, sha)
	seen := map[string]bool{}
	var out []Status
	for i := len(all) - 1; i >= 0; i-- {
		if seen[all[i].Context] {
			continue
		}
		seen[all[i].Context] = true
		out = append(out, all[i])
	}
	return out
}

// combinedState follows GitHub: failure/error wins, then pending, and no
// statuses at all is pending.
func combinedState(statuses []Status) string {
	if len(statuses) == 0 {
		return "pending"
	}
	state := "success"
	for _, st := range statuses {
		switch st.State {
		case "failure", "error":
			return "failure"
		case "pending":
			state = "pending"
		}
	}
	return state
}

// getCombinedStatus serves GET /repos/{owner}/{repo}/commits/{ref}/status.
func (s *Sim) getCombinedStatus(w http.ResponseWriter, r *http.Request) {
	repo, g, ok := s.repoFromPath(w, r)
	if !ok {
		return
	}
	sha := g.resolve(r.PathValue("ref"))
	if sha == "" {
		writeError(w, http.StatusNotFound, "No commit found for SHA: "+r.PathValue("ref"))
		return
	}
	latest := s.latestStatuses(repo.FullName, sha)
	s.mu.Lock()
	var out []*github.RepoStatus
	for _, st := range latest {
		out = append(out, s.ghStatus(st))
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, &github.CombinedStatus{
		State:         github.Ptr(combinedState(latest)),
		Name:          github.Ptr(repo.FullName),
		SHA:           github.Ptr(sha),
		TotalCount:    github.Ptr(len(out)),
		Statuses:      out,
		CommitURL:     github.Ptr(s.APIURL() + "repos/" + repo.FullName + "/commits/" + sha),
		RepositoryURL: github.Ptr(s.APIURL() + "repos/" + repo.FullName),
	})
}

// listStatuses serves GET /repos/{owner}/{repo}/commits/{ref}/statuses,
// newest first like GitHub.
func (s *Sim) listStatuses(w http.ResponseWriter, r *http.Request) {
	repo, g, ok := s.repoFromPath(w, r)
	if !ok {
		return
	}
	sha := g.resolve(r.PathValue("ref"))
	all := []Status{}
	if sha != "" {
		all = s.Statuses(repo.FullName, sha)
	}
	lo, hi := s.paginate(w, r, len(all))
	s.mu.Lock()
	out := []*github.RepoStatus{}
	for i := len(all) - 1 - lo; i >= len(all)-hi; i-- {
		out = append(out, s.ghStatus(all[i]))
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

// listCheckRuns serves GET /repos/{owner}/{repo}/commits/{ref}/check-runs.
// The Sim has no Actions, so there are never any check runs.
func (s *Sim) listCheckRuns(w http.ResponseWriter, r *http.Request) {
	_, g, ok := s.repoFromPath(w, r)
	if !ok {
		return
	}
	if g.resolve(r.PathValue("ref")) == "" {
		writeError(w, http.StatusUnprocessableEntity, "No commit found for SHA: "+r.PathValue("ref"))
		return
	}
	writeJSON(w, http.StatusOK, &github.ListCheckRunsResults{
		Total:     github.Ptr(0),
		CheckRuns: []*github.CheckRun{},
	})
}
