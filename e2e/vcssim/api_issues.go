package vcssim

import (
	"net/http"
	"strings"
	"time"

	"github.com/google/go-github/v88/github"
)

// maxCommentLength is GitHub's limit; Atlantis splits longer output, and a
// comment over the limit means that splitting broke.
const maxCommentLength = 65536

// validReactions are the contents GitHub accepts for a reaction.
var validReactions = map[string]bool{
	"+1": true, "-1": true, "laugh": true, "confused": true,
	"heart": true, "hooray": true, "rocket": true, "eyes": true,
}

// listComments serves GET /repos/{owner}/{repo}/issues/{number}/comments,
// oldest first. Atlantis pages through it to hide its previous comments.
func (s *Sim) listComments(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs, ps, ok := s.pullFromPath(w, r)
	if !ok {
		return
	}
	var matching []*Comment
	for _, c := range s.comments {
		if c.PR == ps.pr.Number && strings.EqualFold(c.Repo, rs.repo.FullName) {
			matching = append(matching, c)
		}
	}
	lo, hi := s.paginate(w, r, len(matching))
	out := []*github.IssueComment{}
	for _, c := range matching[lo:hi] {
		out = append(out, s.ghComment(c))
	}
	writeJSON(w, http.StatusOK, out)
}

// createComment serves POST /repos/{owner}/{repo}/issues/{number}/comments,
// how Atlantis posts plan and apply output.
func (s *Sim) createComment(w http.ResponseWriter, r *http.Request) {
	var in github.IssueComment
	if err := readJSON(r, &in); err != nil {
		writeError(w, http.StatusBadRequest, "Problems parsing JSON")
		return
	}
	body := in.GetBody()
	switch {
	case body == "":
		writeError(w, http.StatusUnprocessableEntity, "Validation Failed",
			apiErrorDetail{Resource: "IssueComment", Field: "body", Code: "missing_field"})
		return
	case len([]rune(body)) > maxCommentLength:
		writeError(w, http.StatusUnprocessableEntity, "Validation Failed",
			apiErrorDetail{Resource: "IssueComment", Field: "body", Code: "custom", Message: "body is too long (maximum is 65536 characters)"})
		return
	}

	if !s.awaitHolds(r, body) {
		return
	}
	s.mu.Lock()
	rs, ps, ok := s.pullFromPath(w, r)
	if !ok {
		s.mu.Unlock()
		return
	}
	c := s.addComment(rs.repo.FullName, ps.pr.Number, requestLogin(r), body)
	c.Client = requestClient(r)
	out := s.ghComment(c)
	s.mu.Unlock()

	first, _, _ := strings.Cut(body, "\n")
	s.logf("vcssim: comment #%d on %s#%d by %s: %.100q", c.ID, c.Repo, c.PR, c.Author, first)
	writeJSON(w, http.StatusCreated, out)
}

// commentFromPath resolves {owner}/{repo}/issues/comments/{id}; must be
// called with s.mu held.
func (s *Sim) commentFromPath(w http.ResponseWriter, r *http.Request) (*Comment, int, bool) {
	id, ok := pathInt(w, r, "id")
	if !ok {
		return nil, 0, false
	}
	rs, found := s.lookupRepo(r.PathValue("owner"), r.PathValue("repo"))
	if !found {
		writeError(w, http.StatusNotFound, "Not Found")
		return nil, 0, false
	}
	c, i := s.findComment(rs.repo.FullName, id)
	if c == nil {
		writeError(w, http.StatusNotFound, "Not Found")
		return nil, 0, false
	}
	return c, i, true
}

// getComment serves GET /repos/{owner}/{repo}/issues/comments/{id}.
func (s *Sim) getComment(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, _, ok := s.commentFromPath(w, r)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, s.ghComment(c))
}

// editComment serves PATCH /repos/{owner}/{repo}/issues/comments/{id}.
func (s *Sim) editComment(w http.ResponseWriter, r *http.Request) {
	var in github.IssueComment
	if err := readJSON(r, &in); err != nil {
		writeError(w, http.StatusBadRequest, "Problems parsing JSON")
		return
	}
	if in.GetBody() == "" {
		writeError(w, http.StatusUnprocessableEntity, "Validation Failed",
			apiErrorDetail{Resource: "IssueComment", Field: "body", Code: "missing_field"})
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, _, ok := s.commentFromPath(w, r)
	if !ok {
		return
	}
	c.Body = in.GetBody()
	c.UpdatedAt = time.Now().UTC()
	writeJSON(w, http.StatusOK, s.ghComment(c))
}

// deleteComment serves DELETE /repos/{owner}/{repo}/issues/comments/{id}.
func (s *Sim) deleteComment(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, i, ok := s.commentFromPath(w, r)
	if !ok {
		return
	}
	s.comments = append(s.comments[:i], s.comments[i+1:]...)
	w.WriteHeader(http.StatusNoContent)
}

// createReaction serves POST .../issues/comments/{id}/reactions, used when
// Atlantis runs with --emoji-reaction.
func (s *Sim) createReaction(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Content string `json:"content"`
	}
	if err := readJSON(r, &in); err != nil {
		writeError(w, http.StatusBadRequest, "Problems parsing JSON")
		return
	}
	if !validReactions[in.Content] {
		writeError(w, http.StatusUnprocessableEntity, "Validation Failed",
			apiErrorDetail{Resource: "Reaction", Field: "content", Code: "invalid"})
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, _, ok := s.commentFromPath(w, r)
	if !ok {
		return
	}
	c.Reactions = append(c.Reactions, in.Content)
	id := s.newID()
	writeJSON(w, http.StatusCreated, &github.Reaction{
		ID:        github.Ptr(id),
		NodeID:    github.Ptr(nodeID("REA", id)),
		User:      s.ghUser(requestLogin(r)),
		Content:   github.Ptr(in.Content),
		CreatedAt: &github.Timestamp{Time: time.Now().UTC()},
	})
}
