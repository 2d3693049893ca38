package vcssim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// graphqlRequest is the body githubv4 posts.
type graphqlRequest struct {
	Query     string          `json:"query"`
	Variables json.RawMessage `json:"variables"`
}

// graphqlVars holds the variables of every operation the Sim understands.
type graphqlVars struct {
	Owner       string   `json:"owner"`
	Name        string   `json:"name"`
	Number      int      `json:"number"`
	ReviewState []string `json:"reviewState"`
	Input       struct {
		SubjectID           string `json:"subjectId"`
		Classifier          string `json:"classifier"`
		PullRequestReviewID string `json:"pullRequestReviewId"`
		Message             string `json:"message"`
	} `json:"input"`
}

type graphqlError struct {
	Type    string   `json:"type,omitempty"`
	Path    []string `json:"path,omitempty"`
	Message string   `json:"message"`
}

// graphql serves POST /api/graphql. githubv4 derives the selection set from
// Go structs and its decoder rejects any field it did not ask for, so each
// operation Atlantis sends is recognised by its text and answered with
// exactly the shape it selects. Anything else is flagged as unknown.
func (s *Sim) graphql(w http.ResponseWriter, r *http.Request) {
	var req graphqlRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, "Problems parsing JSON")
		return
	}
	var vars graphqlVars
	if len(req.Variables) > 0 && string(req.Variables) != "null" {
		if err := json.Unmarshal(req.Variables, &vars); err != nil {
			writeError(w, http.StatusBadRequest, "Problems parsing JSON variables")
			return
		}
	}

	q := req.Query
	switch {
	case strings.Contains(q, "minimizeComment("):
		s.gqlMinimizeComment(w, vars, requestClient(r))
	case strings.Contains(q, "dismissPullRequestReview("):
		s.gqlDismissReview(w, vars)
	case strings.Contains(q, "latestOpinionatedReviews"):
		s.gqlMergeability(w, vars)
	case strings.Contains(q, "reviews(first:"):
		s.gqlReviews(w, vars)
	case strings.Contains(q, "databaseId"):
		s.gqlRepoID(w, vars)
	case strings.Contains(q, "childTeams("):
		// The Sim has no teams; an empty list keeps team allowlists working.
		writeGraphQL(w, map[string]any{"organization": map[string]any{"team": map[string]any{
			"childTeams": map[string]any{"nodes": []any{}, "pageInfo": emptyPageInfo("")},
		}}})
	case strings.Contains(q, "teams(first:"):
		writeGraphQL(w, map[string]any{"organization": map[string]any{
			"teams": map[string]any{"edges": []any{}, "pageInfo": emptyPageInfo("")},
		}})
	default:
		op := q
		if len(op) > 200 {
			op = op[:200] + "..."
		}
		s.markUnknown(r, "graphql: "+op)
		s.logf("vcssim: UNKNOWN GRAPHQL OPERATION (answered 404): %s", op)
		writeError(w, http.StatusNotFound, "Not Found")
	}
}

func writeGraphQL(w http.ResponseWriter, data any, errs ...graphqlError) {
	body := map[string]any{"data": data}
	if len(errs) > 0 {
		body["errors"] = errs
	}
	writeJSON(w, http.StatusOK, body)
}

// emptyPageInfo renders a last page; cursor is "" where Atlantis declares
// the cursor as a plain string and nil where it declares a pointer.
func emptyPageInfo(cursor any) map[string]any {
	return map[string]any{"endCursor": cursor, "hasNextPage": false}
}

func notFound(path, what string) graphqlError {
	return graphqlError{Type: "NOT_FOUND", Path: []string{path}, Message: what}
}

// gqlMinimizeComment hides a comment, as Atlantis does with previous plan
// comments under --hide-prev-plan-comments.
func (s *Sim) gqlMinimizeComment(w http.ResponseWriter, vars graphqlVars, client string) {
	s.mu.Lock()
	var target *Comment
	for _, c := range s.comments {
		if c.NodeID == vars.Input.SubjectID {
			target = c
		}
	}
	if target != nil {
		target.Minimized = true
		target.MinimizedReason = vars.Input.Classifier
		target.MinimizedBy = client
	}
	s.mu.Unlock()

	if target == nil {
		writeGraphQL(w, map[string]any{"minimizeComment": nil},
			notFound("minimizeComment", fmt.Sprintf("Could not resolve to a node with the global id of '%s'", vars.Input.SubjectID)))
		return
	}
	s.logf("vcssim: minimized comment #%d on %s#%d (%s)", target.ID, target.Repo, target.PR, vars.Input.Classifier)
	writeGraphQL(w, map[string]any{"minimizeComment": map[string]any{
		"minimizedComment": map[string]any{
			"isMinimized":       true,
			"minimizedReason":   strings.ToLower(vars.Input.Classifier),
			"viewerCanMinimize": true,
		},
	}})
}

// gqlDismissReview dismisses a review (--discard-approval-on-plan).
func (s *Sim) gqlDismissReview(w http.ResponseWriter, vars graphqlVars) {
	s.mu.Lock()
	var target *review
	for _, rs := range s.repos {
		if rs == nil {
			continue
		}
		for _, ps := range rs.pulls {
			for _, rv := range ps.reviews {
				if rv.NodeID == vars.Input.PullRequestReviewID {
					target = rv
				}
			}
		}
	}
	if target != nil {
		target.State = "DISMISSED"
	}
	s.mu.Unlock()

	if target == nil {
		writeGraphQL(w, map[string]any{"dismissPullRequestReview": nil},
			notFound("dismissPullRequestReview", fmt.Sprintf("Could not resolve to a node with the global id of '%s'", vars.Input.PullRequestReviewID)))
		return
	}
	writeGraphQL(w, map[string]any{"dismissPullRequestReview": map[string]any{
		"pullRequestReview": map[string]any{"id": target.NodeID},
	}})
}

// gqlPull resolves repository(owner,name).pullRequest(number); must be
// called with s.mu held.
func (s *Sim) gqlPull(vars graphqlVars) (*repoState, *pullState, *graphqlError) {
	rs, ok := s.lookupRepo(vars.Owner, vars.Name)
	if !ok {
		e := notFound("repository", fmt.Sprintf("Could not resolve to a Repository with the name '%s/%s'.", vars.Owner, vars.Name))
		return nil, nil, &e
	}
	ps, ok := rs.pulls[vars.Number]
	if !ok {
		e := notFound("pullRequest", fmt.Sprintf("Could not resolve to a PullRequest with the number of %d.", vars.Number))
		return nil, nil, &e
	}
	return rs, ps, nil
}

// reviewDecision is null unless someone reviewed: the Sim has no branch
// protection, and GitHub reports null when no review is required.
func reviewDecision(ps *pullState) any {
	var decision any
	for _, rv := range ps.reviews {
		switch rv.State {
		case "APPROVED":
			if decision == nil {
				decision = "APPROVED"
			}
		case "CHANGES_REQUESTED":
			return "CHANGES_REQUESTED"
		}
	}
	return decision
}

// gqlReviews answers the approved-reviews query behind DiscardReviews.
func (s *Sim) gqlReviews(w http.ResponseWriter, vars graphqlVars) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ps, gerr := s.gqlPull(vars)
	if gerr != nil {
		writeGraphQL(w, map[string]any{"repository": nil}, *gerr)
		return
	}
	wanted := map[string]bool{}
	for _, st := range vars.ReviewState {
		wanted[st] = true
	}
	nodes := []any{}
	for _, rv := range ps.reviews {
		if len(wanted) > 0 && !wanted[rv.State] {
			continue
		}
		nodes = append(nodes, map[string]any{
			"id":          rv.NodeID,
			"submittedAt": rv.SubmittedAt,
			"author":      map[string]any{"login": rv.User},
		})
	}
	writeGraphQL(w, map[string]any{"repository": map[string]any{"pullRequest": map[string]any{
		"reviewDecision": reviewDecision(ps),
		"reviews":        map[string]any{"nodes": nodes, "pageInfo": emptyPageInfo("")},
	}}})
}

// gqlMergeability answers the branch protection / status rollup query used
// with --gh-allow-mergeable-bypass-apply. The Sim has no protection rules,
// so only the posted commit statuses show up.
func (s *Sim) gqlMergeability(w http.ResponseWriter, vars graphqlVars) {
	s.mu.Lock()
	rs, ps, gerr := s.gqlPull(vars)
	if gerr != nil {
		s.mu.Unlock()
		writeGraphQL(w, map[string]any{"repository": nil}, *gerr)
		return
	}
	fullName, head, decision := rs.repo.FullName, ps.pr.HeadSHA, reviewDecision(ps)
	opinions := []any{}
	latest := map[string]string{}
	var order []string
	for _, rv := range ps.reviews {
		if rv.State != "APPROVED" && rv.State != "CHANGES_REQUESTED" {
			continue
		}
		if _, seen := latest[rv.User]; !seen {
			order = append(order, rv.User)
		}
		latest[rv.User] = rv.State
	}
	for _, u := range order {
		opinions = append(opinions, map[string]any{"state": latest[u]})
	}
	s.mu.Unlock()

	contexts := []any{}
	for _, st := range s.latestStatuses(fullName, head) {
		contexts = append(contexts, map[string]any{
			"__typename": "StatusContext",
			"context":    st.Context,
			"state":      strings.ToUpper(st.State),
			"isRequired": false,
		})
	}
	writeGraphQL(w, map[string]any{"repository": map[string]any{"pullRequest": map[string]any{
		"reviewDecision":           decision,
		"latestOpinionatedReviews": map[string]any{"nodes": opinions},
		"baseRef": map[string]any{
			"branchProtectionRule": nil,
			"rules":                map[string]any{"pageInfo": emptyPageInfo(nil), "nodes": []any{}},
		},
		"commits": map[string]any{"nodes": []any{
			map[string]any{"commit": map[string]any{"statusCheckRollup": map[string]any{
				"contexts": map[string]any{"pageInfo": emptyPageInfo(nil), "nodes": contexts},
			}}},
		}},
	}}})
}

// gqlRepoID answers repository(owner,name){databaseId}.
func (s *Sim) gqlRepoID(w http.ResponseWriter, vars graphqlVars) {
	s.mu.Lock()
	rs, ok := s.lookupRepo(vars.Owner, vars.Name)
	s.mu.Unlock()
	if !ok {
		writeGraphQL(w, map[string]any{"repository": nil},
			notFound("repository", fmt.Sprintf("Could not resolve to a Repository with the name '%s/%s'.", vars.Owner, vars.Name)))
		return
	}
	writeGraphQL(w, map[string]any{"repository": map[string]any{"databaseId": rs.repo.ID}})
}
