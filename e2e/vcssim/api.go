package vcssim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// routes lists every endpoint the Sim implements. Paths are relative to the
// host; REST paths carry GitHub Enterprise's /api/v3 prefix.
func (s *Sim) routes() *router {
	rt := &router{}
	const repo = "/api/v3/repos/{owner}/{repo}"

	rt.handle("GET", "/api/v3/user", s.getAuthenticatedUser)
	rt.handle("GET", "/api/v3/users/{login}", s.getUser)

	rt.handle("GET", repo, s.getRepo)
	rt.handle("GET", repo+"/contents/{path...}", s.getContents)
	rt.handle("GET", repo+"/git/blobs/{sha}", s.getBlob)
	rt.handle("POST", repo+"/statuses/{sha}", s.createStatus)
	rt.handle("GET", repo+"/commits/{ref}/status", s.getCombinedStatus)
	rt.handle("GET", repo+"/commits/{ref}/statuses", s.listStatuses)
	rt.handle("GET", repo+"/commits/{ref}/check-runs", s.listCheckRuns)

	rt.handle("GET", repo+"/pulls/{number}", s.getPull)
	rt.handle("GET", repo+"/pulls/{number}/files", s.listPullFiles)
	rt.handle("GET", repo+"/pulls/{number}/reviews", s.listReviews)
	rt.handle("PUT", repo+"/pulls/{number}/merge", s.mergePullRequest)

	// The comment-by-id routes come first because "comments" would also
	// match {number} in the per-issue routes.
	rt.handle("GET", repo+"/issues/comments/{id}", s.getComment)
	rt.handle("PATCH", repo+"/issues/comments/{id}", s.editComment)
	rt.handle("DELETE", repo+"/issues/comments/{id}", s.deleteComment)
	rt.handle("POST", repo+"/issues/comments/{id}/reactions", s.createReaction)
	rt.handle("GET", repo+"/issues/{number}/comments", s.listComments)
	rt.handle("POST", repo+"/issues/{number}/comments", s.createComment)

	rt.handle("POST", "/api/graphql", s.graphql)
	return rt
}

// serveAPI authenticates a REST or GraphQL request and dispatches it.
func (s *Sim) serveAPI(w http.ResponseWriter, r *http.Request) {
	setGitHubHeaders(w)
	login, client, ok := s.authenticate(r)
	if !ok {
		if r.Header.Get("Authorization") == "" {
			writeError(w, http.StatusUnauthorized, "Requires authentication")
		} else {
			s.logf("vcssim: rejected bad credentials for %s %s", r.Method, r.URL.Path)
			writeError(w, http.StatusUnauthorized, "Bad credentials")
		}
		return
	}
	if info, ok := r.Context().Value(requestInfoKey{}).(*requestInfo); ok {
		info.login = login
		info.client = client
	}
	h := s.api.match(r)
	if h == nil {
		s.unknown(w, r)
		return
	}
	h(w, r)
}

// authenticate accepts the token as a basic-auth password (Atlantis with
// --gh-user/--gh-token) or as a "token"/"Bearer" Authorization header.
func (s *Sim) authenticate(r *http.Request) (login, client string, ok bool) {
	var presented string
	if _, pass, ok := r.BasicAuth(); ok {
		presented = pass
	} else {
		auth := r.Header.Get("Authorization")
		for _, prefix := range []string{"token ", "Bearer ", "bearer "} {
			if strings.HasPrefix(auth, prefix) {
				presented = strings.TrimSpace(strings.TrimPrefix(auth, prefix))
			}
		}
	}
	client, ok = s.clientOf(presented)
	if !ok {
		return "", "", false
	}
	return s.user, client, true
}

// requestClient is the client the request's credential names (ClientToken).
func requestClient(r *http.Request) string {
	if info, ok := r.Context().Value(requestInfoKey{}).(*requestInfo); ok {
		return info.client
	}
	return ""
}

// requestLogin is the login the request authenticated as.
func requestLogin(r *http.Request) string {
	if info, ok := r.Context().Value(requestInfoKey{}).(*requestInfo); ok {
		return info.login
	}
	return ""
}

// router matches GitHub-style paths in registration order. net/http's
// ServeMux refuses overlapping patterns such as issues/{number}/comments and
// issues/comments/{id}, and answers 405 for a known path with another method,
// which would hide an unimplemented endpoint from UnknownRequests.
type router struct {
	routes []route
}

type route struct {
	method   string
	segments []string
	handler  http.HandlerFunc
}

func (rt *router) handle(method, pattern string, h http.HandlerFunc) {
	rt.routes = append(rt.routes, route{
		method:   method,
		segments: strings.Split(strings.Trim(pattern, "/"), "/"),
		handler:  h,
	})
}

// match returns the handler for r and stores the path wildcards on r, where
// handlers read them with r.PathValue.
func (rt *router) match(r *http.Request) http.HandlerFunc {
	path := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	for _, rte := range rt.routes {
		if rte.method != r.Method {
			continue
		}
		values, ok := matchSegments(rte.segments, path)
		if !ok {
			continue
		}
		for k, v := range values {
			r.SetPathValue(k, v)
		}
		return rte.handler
	}
	return nil
}

func matchSegments(pattern, path []string) (map[string]string, bool) {
	values := map[string]string{}
	for i, seg := range pattern {
		if strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "...}") {
			if i >= len(path) {
				return nil, false
			}
			values[strings.TrimSuffix(strings.TrimPrefix(seg, "{"), "...}")] = strings.Join(path[i:], "/")
			return values, true
		}
		if i >= len(path) {
			return nil, false
		}
		if strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}") {
			if path[i] == "" {
				return nil, false
			}
			values[strings.TrimSuffix(strings.TrimPrefix(seg, "{"), "}")] = path[i]
			continue
		}
		if seg != path[i] {
			return nil, false
		}
	}
	return values, len(pattern) == len(path)
}

// setGitHubHeaders adds the headers go-github and the secondary rate limiter
// inspect, with values that never trigger a back-off.
func setGitHubHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("X-GitHub-Media-Type", "github.v3; format=json")
	h.Set("X-GitHub-Enterprise-Version", "3.14.0")
	h.Set("X-RateLimit-Limit", "5000")
	h.Set("X-RateLimit-Remaining", "4999")
	h.Set("X-RateLimit-Used", "1")
	h.Set("X-RateLimit-Resource", "core")
	h.Set("X-RateLimit-Reset", strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, fmt.Sprintf("encoding response: %s", err))
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// apiError is GitHub's error body; go-github turns it into ErrorResponse.
type apiError struct {
	Message          string           `json:"message"`
	Errors           []apiErrorDetail `json:"errors,omitempty"`
	DocumentationURL string           `json:"documentation_url"`
}

type apiErrorDetail struct {
	Resource string `json:"resource,omitempty"`
	Field    string `json:"field,omitempty"`
	Code     string `json:"code"`
	Message  string `json:"message,omitempty"`
}

func writeError(w http.ResponseWriter, status int, message string, details ...apiErrorDetail) {
	body, _ := json.Marshal(apiError{
		Message:          message,
		Errors:           details,
		DocumentationURL: "https://docs.github.com/enterprise-server@3.14/rest",
	})
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func readJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 10<<20))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decoding request body: %w", err)
	}
	return nil
}

// pathInt parses a numeric path wildcard, answering 404 like GitHub does
// for a non-numeric pull or comment number.
func pathInt(w http.ResponseWriter, r *http.Request, name string) (int64, bool) {
	n, err := strconv.ParseInt(r.PathValue(name), 10, 64)
	if err != nil || n <= 0 {
		writeError(w, http.StatusNotFound, "Not Found")
		return 0, false
	}
	return n, true
}

// paginate slices a list of total items the way GitHub does (page and
// per_page query parameters, capped at 100 per page) and sets the Link
// header go-github reads NextPage from.
func (s *Sim) paginate(w http.ResponseWriter, r *http.Request, total int) (lo, hi int) {
	q := r.URL.Query()
	perPage, err := strconv.Atoi(q.Get("per_page"))
	if err != nil || perPage <= 0 {
		perPage = 30
	}
	if perPage > 100 {
		perPage = 100
	}
	page, err := strconv.Atoi(q.Get("page"))
	if err != nil || page <= 0 {
		page = 1
	}
	lastPage := max(1, (total+perPage-1)/perPage)

	var links []string
	link := func(p int, rel string) {
		q := r.URL.Query()
		q.Set("page", strconv.Itoa(p))
		q.Set("per_page", strconv.Itoa(perPage))
		u := url.URL{Scheme: "https", Host: s.host, Path: r.URL.Path, RawQuery: q.Encode()}
		links = append(links, fmt.Sprintf("<%s>; rel=%q", u.String(), rel))
	}
	if page > 1 {
		link(page-1, "prev")
		link(1, "first")
	}
	if page < lastPage {
		link(page+1, "next")
		link(lastPage, "last")
	}
	if len(links) > 0 {
		w.Header().Set("Link", strings.Join(links, ", "))
	}

	lo = min((page-1)*perPage, total)
	hi = min(lo+perPage, total)
	return lo, hi
}
