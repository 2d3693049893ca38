// Package vcssim is a GitHub Enterprise stand-in for end-to-end tests and the
// offline demo. It serves the REST (/api/v3/) and GraphQL (/api/graphql)
// calls that the Atlantis GitHub client makes, hosts real git repositories
// over smart HTTP, sends signed webhooks shaped like GitHub's, and records
// every comment and commit status Atlantis posts so tests can assert on them.
//
// Atlantis is pointed at it with --gh-hostname=Sim.Host() plus the Sim's
// user, token and webhook secret, and told to trust Sim.CAFile() through
// SSL_CERT_FILE (Go) and GIT_SSL_CAINFO (git); Sim.Env returns both.
//
// Anything the Sim does not implement is answered 404 and logged loudly, and
// is listed by UnknownRequests, so a missing endpoint shows up as a clear test
// failure instead of a silent hang.
package vcssim

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/atlantis-enhanced/atlantis/testing/testpki"
)

// Defaults used when Options leaves a field empty.
const (
	DefaultUser          = "atlantis-bot"
	DefaultToken         = "vcssim-token"
	DefaultWebhookSecret = "vcssim-webhook-secret"
)

// Options configures a Sim. The zero value is usable.
type Options struct {
	// User is the login the API token belongs to. Comments and statuses
	// created with the token are attributed to it, which matters because
	// Atlantis only hides its own previous comments (matched by --gh-user).
	User string
	// Token is the only credential the API and git endpoints accept, as a
	// basic-auth password (what Atlantis sends) or a token/bearer header.
	Token string
	// WebhookSecret signs outgoing webhooks (--gh-webhook-secret).
	WebhookSecret string
	// Logf receives the Sim's log lines, e.g. testing.T.Logf. Defaults to
	// the standard logger.
	Logf func(format string, args ...any)
}

// Sim is a running GitHub stand-in. Create it with New and stop it with Close.
type Sim struct {
	user          string
	token         string
	webhookSecret string
	userLogf      func(format string, args ...any)

	// logMu guards userLogf against use after Close: testing.T.Logf panics
	// when a late server goroutine logs after the test has finished.
	logMu     sync.Mutex
	logClosed bool

	dir      string // temp root: CA, bare repos, scratch files
	reposDir string
	pki      *testpki.PKI
	listener net.Listener
	server   *http.Server
	served   chan struct{}
	host     string
	api      *router
	git      *gitBackend
	hooks    *http.Client

	// gitMu serialises the ref updates the Sim makes itself, so two
	// concurrent helpers cannot lose each other's commits.
	gitMu sync.Mutex

	mu sync.Mutex
	// clients maps each token ClientToken handed out to its client's name.
	clients  map[string]string
	closed   bool
	nextID   int64
	users    map[string]int64
	repos    map[string]*repoState
	comments []*Comment
	statuses []Status
	requests []Request
	holds    []*CommentHold
}

// New starts a Sim listening on a random 127.0.0.1 port.
func New(opts Options) (*Sim, error) {
	s := &Sim{
		user:          opts.User,
		token:         opts.Token,
		webhookSecret: opts.WebhookSecret,
		userLogf:      opts.Logf,
		served:        make(chan struct{}),
		nextID:        1000,
		users:         map[string]int64{},
		clients:       map[string]string{},
		repos:         map[string]*repoState{},
	}
	if s.user == "" {
		s.user = DefaultUser
	}
	if s.token == "" {
		s.token = DefaultToken
	}
	if s.webhookSecret == "" {
		s.webhookSecret = DefaultWebhookSecret
	}
	if s.userLogf == nil {
		s.userLogf = log.Printf
	}

	dir, err := os.MkdirTemp("", "vcssim-")
	if err != nil {
		return nil, fmt.Errorf("creating temp dir: %w", err)
	}
	s.dir = dir
	if err := s.start(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

func (s *Sim) start() error {
	s.reposDir = filepath.Join(s.dir, "repos")
	if err := os.MkdirAll(s.reposDir, 0o700); err != nil {
		return fmt.Errorf("creating repos dir: %w", err)
	}
	pki, err := testpki.New(s.dir, "vcssim")
	if err != nil {
		return fmt.Errorf("generating TLS certificates: %w", err)
	}
	s.pki = pki
	git, err := newGitBackend(s)
	if err != nil {
		return err
	}
	s.git = git
	s.api = s.routes()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listening: %w", err)
	}
	s.listener = ln
	s.host = ln.Addr().String()
	s.hooks = &http.Client{Timeout: 60 * time.Second}
	s.server = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{pki.Certificate},
			MinVersion:   tls.VersionTLS12,
		},
		ErrorLog: log.New(logWriter{s.logf}, "vcssim: http: ", 0),
	}
	go func() {
		defer close(s.served)
		if err := s.server.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.logf("vcssim: server stopped: %s", err)
		}
	}()
	s.logf("vcssim: GitHub Enterprise stand-in listening on https://%s (user %q)", s.host, s.user)
	return nil
}

// Close stops the server and removes every temp dir the Sim created.
func (s *Sim) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.releaseHolds()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var errs []error
	if err := s.server.Shutdown(ctx); err != nil {
		// Long git fetches may still be streaming; cut them off so the temp
		// dir can be removed.
		errs = append(errs, fmt.Errorf("shutting down server: %w", err))
		_ = s.server.Close()
	}
	<-s.served
	s.hooks.CloseIdleConnections()
	s.logMu.Lock()
	s.logClosed = true
	s.logMu.Unlock()
	if err := os.RemoveAll(s.dir); err != nil {
		errs = append(errs, fmt.Errorf("removing temp dir: %w", err))
	}
	return errors.Join(errs...)
}

// logf logs through Options.Logf until Close.
func (s *Sim) logf(format string, args ...any) {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	if !s.logClosed {
		s.userLogf(format, args...)
	}
}

// Host is the value for Atlantis's --gh-hostname, e.g. "127.0.0.1:40123".
func (s *Sim) Host() string { return s.host }

// URL is the web root, e.g. "https://127.0.0.1:40123".
func (s *Sim) URL() string { return "https://" + s.host }

// APIURL is the REST base URL, with the trailing slash go-github expects.
func (s *Sim) APIURL() string { return s.URL() + "/api/v3/" }

// User is the login of the token's owner (--gh-user).
func (s *Sim) User() string { return s.user }

// Token is the accepted API and git credential (--gh-token).
func (s *Sim) Token() string { return s.token }

// ClientToken returns a credential for the same user as Token that also
// names the client using it: every request, comment, status and hidden
// comment made with it records client, so a test can tell which of several
// Atlantis replicas did what.
func (s *Sim) ClientToken(client string) string {
	token := s.token + "-" + client
	s.mu.Lock()
	s.clients[token] = client
	s.mu.Unlock()
	return token
}

// clientOf returns the client a presented credential names: "" for Token,
// ok false for a credential the Sim never handed out.
func (s *Sim) clientOf(presented string) (string, bool) {
	if presented != "" && subtle.ConstantTimeCompare([]byte(presented), []byte(s.token)) == 1 {
		return "", true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	client, ok := s.clients[presented]
	return client, ok
}

// WebhookSecret signs webhooks (--gh-webhook-secret).
func (s *Sim) WebhookSecret() string { return s.webhookSecret }

// CAFile is the PEM file of the CA that signed the Sim's certificate.
func (s *Sim) CAFile() string { return s.pki.CAFile }

// Env returns the environment entries that make Go programs (SSL_CERT_FILE)
// and git (GIT_SSL_CAINFO, which git's libcurl needs since it does not read
// SSL_CERT_FILE on every build) trust the Sim.
func (s *Sim) Env() []string {
	return []string{
		"SSL_CERT_FILE=" + s.pki.CAFile,
		"GIT_SSL_CAINFO=" + s.pki.CAFile,
	}
}

// HTTPClient returns a client that trusts the Sim's CA and sends the Sim
// token as basic auth, the way Atlantis authenticates.
func (s *Sim) HTTPClient() *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &basicAuthTransport{
			user:  s.user,
			token: s.token,
			base:  s.Transport(),
		},
	}
}

// Transport returns an unauthenticated transport that trusts the Sim's CA.
func (s *Sim) Transport() *http.Transport {
	return &http.Transport{
		Proxy:           nil,
		TLSClientConfig: &tls.Config{RootCAs: s.pki.Pool, MinVersion: tls.VersionTLS12},
	}
}

type basicAuthTransport struct {
	user, token string
	base        http.RoundTripper
}

func (t *basicAuthTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.SetBasicAuth(t.user, t.token)
	return t.base.RoundTrip(r)
}

// ServeHTTP routes a request to the REST API, GraphQL or git, and records it.
func (s *Sim) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	info := &requestInfo{}
	r = r.WithContext(context.WithValue(r.Context(), requestInfoKey{}, info))
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	start := time.Now()

	switch {
	case r.URL.Path == "/api/graphql" || strings.HasPrefix(r.URL.Path, "/api/v3/") || r.URL.Path == "/api/v3":
		s.serveAPI(rec, r)
	case isGitPath(r.URL.Path):
		s.git.ServeHTTP(rec, r)
	default:
		s.unknown(rec, r)
	}

	s.record(Request{
		Method:   r.Method,
		Path:     r.URL.Path,
		Query:    r.URL.RawQuery,
		Status:   rec.status,
		Unknown:  info.unknown,
		Detail:   info.detail,
		Duration: time.Since(start),
		Time:     start,
		Client:   info.client,
	})
}

// unknown answers 404 like GitHub and flags the request so tests can see
// which endpoint Atlantis needed but the Sim lacks.
func (s *Sim) unknown(w http.ResponseWriter, r *http.Request) {
	s.markUnknown(r, "")
	s.logf("vcssim: UNKNOWN REQUEST %s %s (answered 404)", r.Method, r.URL.RequestURI())
	writeError(w, http.StatusNotFound, "Not Found")
}

func (s *Sim) markUnknown(r *http.Request, detail string) {
	if info, ok := r.Context().Value(requestInfoKey{}).(*requestInfo); ok {
		info.unknown = true
		info.detail = detail
	}
}

type requestInfoKey struct{}

type requestInfo struct {
	unknown bool
	detail  string
	login   string
	client  string
}

// statusRecorder remembers the response status for the request log.
type statusRecorder struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
}

func (r *statusRecorder) WriteHeader(code int) {
	if !r.wroteHeader {
		r.status = code
		r.wroteHeader = true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	r.wroteHeader = true
	return r.ResponseWriter.Write(b)
}

// Flush keeps git's streamed pack responses flowing through the recorder.
func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// logWriter adapts Logf to the io.Writer http.Server wants for its errors.
type logWriter struct{ logf func(string, ...any) }

func (l logWriter) Write(p []byte) (int, error) {
	l.logf("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
