package vcssim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"time"
)

// Deleted, used as a file's content in CreateRepo/OpenPullRequest/
// UpdatePullRequest, removes the file instead of writing it.
const Deleted = "\x00vcssim:deleted\x00"

// gitTimeout bounds every git command the Sim runs itself.
const gitTimeout = 30 * time.Second

// gitRepo wraps a bare repository on disk. All writes go through plumbing
// commands with a throwaway index, so no working tree is ever needed and
// the commit SHAs are real.
type gitRepo struct {
	dir     string
	scratch string // dir for temporary index files
}

// isolatedGitEnv keeps the host's git configuration (signing, hooks,
// default branch, ...) from leaking into the repositories the Sim builds.
func isolatedGitEnv() []string {
	env := []string{
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_CONFIG_GLOBAL=" + os.DevNull,
		"GIT_TERMINAL_PROMPT=0",
		"LC_ALL=C",
	}
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "GIT_") || strings.HasPrefix(kv, "LC_ALL=") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// run executes git against the bare repo and returns trimmed stdout.
func (g gitRepo) run(stdin []byte, extraEnv []string, args ...string) (string, error) {
	out, err := g.runRaw(stdin, extraEnv, args...)
	return strings.TrimSpace(string(out)), err
}

func (g gitRepo) runRaw(stdin []byte, extraEnv []string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), gitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "git", append([]string{"--git-dir=" + g.dir}, args...)...)
	cmd.Env = append(isolatedGitEnv(), extraEnv...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

func initBareRepo(dir, scratch, defaultBranch string) (gitRepo, error) {
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return gitRepo{}, fmt.Errorf("creating repo parent dir: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), gitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "git", "init", "--bare", "--quiet", "--initial-branch="+defaultBranch, dir)
	cmd.Env = isolatedGitEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		return gitRepo{}, fmt.Errorf("git init --bare %s: %w: %s", dir, err, out)
	}
	return gitRepo{dir: dir, scratch: scratch}, nil
}

// commitAuthor describes who a commit is attributed to.
type commitAuthor struct {
	login string
	host  string
	when  time.Time
}

func (a commitAuthor) env() []string {
	email := a.login + "@users.noreply." + strings.Split(a.host, ":")[0]
	date := a.when.Format(time.RFC3339)
	return []string{
		"GIT_AUTHOR_NAME=" + a.login, "GIT_AUTHOR_EMAIL=" + email, "GIT_AUTHOR_DATE=" + date,
		"GIT_COMMITTER_NAME=" + a.login, "GIT_COMMITTER_EMAIL=" + email, "GIT_COMMITTER_DATE=" + date,
	}
}

// commitFiles writes files on top of parent (empty for a root commit) and
// returns the new commit's SHA. It does not move any ref.
func (g gitRepo) commitFiles(parent string, files map[string]string, message string, who commitAuthor) (string, error) {
	if len(files) == 0 {
		return "", errors.New("no files to commit")
	}
	index, err := os.CreateTemp(g.scratch, "index-")
	if err != nil {
		return "", fmt.Errorf("creating temp index: %w", err)
	}
	indexPath := index.Name()
	_ = index.Close()
	// git refuses to read an empty file as an index, so start from nothing.
	_ = os.Remove(indexPath)
	defer func() { _ = os.Remove(indexPath) }()
	env := []string{"GIT_INDEX_FILE=" + indexPath}

	if parent != "" {
		if _, err := g.run(nil, env, "read-tree", parent); err != nil {
			return "", err
		}
	}

	// Blobs are hashed in one git process from scratch files; one process
	// per file makes pull requests with hundreds of files slow.
	blobDir, err := os.MkdirTemp(g.scratch, "blobs-")
	if err != nil {
		return "", fmt.Errorf("creating blob scratch dir: %w", err)
	}
	defer func() { _ = os.RemoveAll(blobDir) }()

	var info, blobPaths strings.Builder
	var written []string
	for name, content := range files {
		clean, err := cleanRepoPath(name)
		if err != nil {
			return "", err
		}
		if content == Deleted {
			// Mode 0 removes the path from the index.
			fmt.Fprintf(&info, "0 %s\t%s\n", strings.Repeat("0", 40), clean)
			continue
		}
		blobPath := filepath.Join(blobDir, fmt.Sprint(len(written)))
		if err := os.WriteFile(blobPath, []byte(content), 0o600); err != nil {
			return "", fmt.Errorf("writing blob scratch file: %w", err)
		}
		blobPaths.WriteString(blobPath + "\n")
		written = append(written, clean)
	}
	if len(written) > 0 {
		out, err := g.run([]byte(blobPaths.String()), nil, "hash-object", "-w", "--no-filters", "--stdin-paths")
		if err != nil {
			return "", err
		}
		shas := strings.Fields(out)
		if len(shas) != len(written) {
			return "", fmt.Errorf("git hash-object returned %d ids for %d files", len(shas), len(written))
		}
		for i, clean := range written {
			fmt.Fprintf(&info, "100644 blob %s\t%s\n", shas[i], clean)
		}
	}
	if _, err := g.run([]byte(info.String()), env, "update-index", "--index-info"); err != nil {
		return "", err
	}
	tree, err := g.run(nil, env, "write-tree")
	if err != nil {
		return "", err
	}
	args := []string{"commit-tree", tree, "-m", message}
	if parent != "" {
		args = append(args, "-p", parent)
	}
	return g.run(nil, who.env(), args...)
}

// cleanRepoPath rejects paths that would escape the repository or that git
// cannot store, instead of letting git fail with a confusing message.
func cleanRepoPath(name string) (string, error) {
	if name == "" || strings.ContainsAny(name, "\x00\n\t\\") || strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("invalid file path %q", name)
	}
	clean := path.Clean(name)
	if clean == "." || clean == ".." || strings.HasPrefix(clean, "../") || clean == ".git" || strings.HasPrefix(clean, ".git/") {
		return "", fmt.Errorf("invalid file path %q", name)
	}
	return clean, nil
}

// updateRef moves ref to sha, failing if it no longer points at old (empty
// old means the ref must not exist yet).
func (g gitRepo) updateRef(ref, sha, old string) error {
	if old == "" {
		old = strings.Repeat("0", 40)
	}
	_, err := g.run(nil, nil, "update-ref", ref, sha, old)
	return err
}

// resolve returns the commit SHA of rev, or "" if it does not exist.
func (g gitRepo) resolve(rev string) string {
	if strings.HasPrefix(rev, "-") {
		return ""
	}
	sha, err := g.run(nil, nil, "rev-parse", "--verify", "--quiet", rev+"^{commit}")
	if err != nil {
		return ""
	}
	return sha
}

// validBranchName applies git's own ref-name rules.
func validBranchName(name string) error {
	if name == "" || strings.HasPrefix(name, "-") {
		return fmt.Errorf("invalid branch name %q", name)
	}
	cmd := exec.Command("git", "check-ref-format", "--branch", name)
	cmd.Env = isolatedGitEnv()
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("invalid branch name %q", name)
	}
	return nil
}

// fileChange is one entry of a pull request's file list.
type fileChange struct {
	Filename         string
	PreviousFilename string
	Status           string // added, modified, removed, renamed
	SHA              string
}

// changedFiles lists what head changes relative to its merge base with base,
// which is what GitHub's pull request "Files changed" shows.
func (g gitRepo) changedFiles(base, head string) ([]fileChange, error) {
	// --raw carries the new blob SHA, saving a lookup per file.
	out, err := g.runRaw(nil, nil, "diff", "--raw", "--no-abbrev", "-z", "-M", base+"..."+head)
	if err != nil {
		return nil, err
	}
	fields := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
	var changes []fileChange
	for i := 0; i < len(fields); i++ {
		meta := strings.Fields(strings.TrimPrefix(fields[i], ":"))
		if len(meta) != 5 {
			continue
		}
		next := func() string {
			i++
			if i < len(fields) {
				return fields[i]
			}
			return ""
		}
		c := fileChange{SHA: meta[3]}
		switch meta[4][0] {
		case 'A':
			c.Filename, c.Status = next(), "added"
		case 'D':
			c.Filename, c.Status, c.SHA = next(), "removed", ""
		case 'R':
			c.PreviousFilename = next()
			c.Filename, c.Status = next(), "renamed"
		case 'C':
			_ = next()
			c.Filename, c.Status = next(), "added"
		default:
			c.Filename, c.Status = next(), "modified"
		}
		changes = append(changes, c)
	}
	return changes, nil
}

// mergeCommit builds the commit GitHub's merge button would create on top
// of baseSHA: a two-parent merge, or for "squash" and "rebase" a single
// parent commit with the merged tree (a rebase of one commit looks the same).
func (g gitRepo) mergeCommit(baseSHA, headSHA, method, message string, who commitAuthor) (string, error) {
	tree, err := g.run(nil, nil, "merge-tree", "--write-tree", "--no-messages", baseSHA, headSHA)
	if err != nil {
		return "", fmt.Errorf("merge conflict or merge failure: %w", err)
	}
	tree = strings.SplitN(tree, "\n", 2)[0]
	args := []string{"commit-tree", tree, "-m", message, "-p", baseSHA}
	if method == "merge" {
		args = append(args, "-p", headSHA)
	}
	return g.run(nil, who.env(), args...)
}

// object returns the type ("blob" or "tree") and SHA of ref:path.
func (g gitRepo) object(ref, p string) (kind, sha string, err error) {
	spec := ref + ":" + p
	if sha, err = g.run(nil, nil, "rev-parse", "--verify", "--quiet", spec); err != nil {
		return "", "", err
	}
	kind, err = g.run(nil, nil, "cat-file", "-t", sha)
	return kind, sha, err
}

func (g gitRepo) blob(sha string) ([]byte, error) {
	return g.runRaw(nil, nil, "cat-file", "blob", sha)
}

// treeEntry is one line of git ls-tree.
type treeEntry struct {
	Name, Type, SHA string
}

func (g gitRepo) tree(sha string) ([]treeEntry, error) {
	out, err := g.runRaw(nil, nil, "ls-tree", "-z", sha)
	if err != nil {
		return nil, err
	}
	var entries []treeEntry
	for _, line := range strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00") {
		meta, name, ok := strings.Cut(line, "\t")
		if !ok {
			continue
		}
		parts := strings.Fields(meta)
		if len(parts) != 3 {
			continue
		}
		entries = append(entries, treeEntry{Name: name, Type: parts[1], SHA: parts[2]})
	}
	return entries, nil
}

// gitBackend serves the bare repositories over smart HTTP with git's own
// http-backend, so clone/fetch behave exactly as against a real server.
type gitBackend struct {
	sim     *Sim
	backend string
}

func newGitBackend(s *Sim) (*gitBackend, error) {
	out, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		return nil, fmt.Errorf("finding git exec path (is git installed?): %w", err)
	}
	backend := filepath.Join(strings.TrimSpace(string(out)), "git-http-backend")
	if _, err := os.Stat(backend); err != nil {
		return nil, fmt.Errorf("git-http-backend not available: %w", err)
	}
	return &gitBackend{sim: s, backend: backend}, nil
}

// isGitPath reports whether p looks like a smart HTTP request for
// /owner/repo.git/..., the form of the clone URLs the Sim hands out.
func isGitPath(p string) bool {
	parts := strings.SplitN(strings.TrimPrefix(p, "/"), "/", 3)
	return len(parts) == 3 && parts[0] != "" && strings.HasSuffix(parts[1], ".git") && len(parts[1]) > len(".git")
}

func (b *gitBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := b.sim
	parts := strings.SplitN(strings.TrimPrefix(r.URL.Path, "/"), "/", 3)
	owner, name := parts[0], strings.TrimSuffix(parts[1], ".git")

	s.mu.Lock()
	rs, ok := s.lookupRepo(owner, name)
	var repoDir string
	if ok {
		repoDir = rs.git.dir
	}
	s.mu.Unlock()
	if !ok {
		http.Error(w, "Repository not found.", http.StatusNotFound)
		return
	}

	// Repositories are private: git only sends the credentials embedded in
	// the clone URL after a Basic challenge, as with real GitHub.
	user, pass, hasAuth := r.BasicAuth()
	client, known := s.clientOf(pass)
	if !hasAuth || !known {
		if hasAuth {
			s.logf("vcssim: git: bad credentials for user %q on %s", user, r.URL.Path)
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="GitHub"`)
		http.Error(w, "Authentication failed", http.StatusUnauthorized)
		return
	}

	if info, ok := r.Context().Value(requestInfoKey{}).(*requestInfo); ok {
		info.client = client
	}
	// Atlantis only reads; pushes would bypass the pull request bookkeeping.
	if r.URL.Query().Get("service") == "git-receive-pack" || strings.HasSuffix(r.URL.Path, "/git-receive-pack") {
		s.logf("vcssim: git: rejected push to %s; use OpenPullRequest/UpdatePullRequest", r.URL.Path)
		http.Error(w, "Pushing is not supported by vcssim", http.StatusForbidden)
		return
	}

	// net/http/cgi rejects chunked bodies, which git uses for large fetch
	// negotiations, so buffer them.
	if len(r.TransferEncoding) > 0 {
		body, err := io.ReadAll(io.LimitReader(r.Body, 256<<20))
		if err != nil {
			http.Error(w, "reading request body", http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		r.TransferEncoding = nil
	}

	// The CGI path is resolved relative to GIT_PROJECT_ROOT, which must be
	// the real location of the repo (owner/name casing may differ).
	rel, err := filepath.Rel(s.reposDir, repoDir)
	if err != nil {
		http.Error(w, "resolving repository", http.StatusInternalServerError)
		return
	}
	r2 := r.Clone(r.Context())
	r2.URL.Path = "/" + filepath.ToSlash(rel) + "/" + parts[2]

	h := &cgi.Handler{
		Path: b.backend,
		Root: "/",
		Dir:  s.reposDir,
		Env: append(isolatedGitEnv(),
			"GIT_PROJECT_ROOT="+s.reposDir,
			"GIT_HTTP_EXPORT_ALL=1",
			"REMOTE_USER="+user,
		),
		Stderr: logWriter{s.logf},
	}
	h.ServeHTTP(w, r2)
}
