package vcssim

import (
	"net/http"

	"github.com/google/go-github/v88/github"
)

// getAuthenticatedUser serves GET /user for the token's owner.
func (s *Sim) getAuthenticatedUser(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	u := s.ghUser(requestLogin(r))
	s.mu.Unlock()
	u.Name = github.Ptr(u.GetLogin())
	writeJSON(w, http.StatusOK, u)
}

// getUser serves GET /users/{login}. Every login exists, since the harness
// invents users freely when it sends comments.
func (s *Sim) getUser(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	u := s.ghUser(r.PathValue("login"))
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, u)
}
