package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/e2e/e2ekit"
	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
	"github.com/atlantis-enhanced/atlantis/testdrive"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

const (
	repoOwner = "acme"
	repoName  = "infra"
	repoFull  = repoOwner + "/" + repoName
	// projectDir is the one Terraform project of the test repo.
	projectDir = "network"
	// lockKey is upstream's Redis key of that project's lock in the default
	// workspace: pr/{repo}/{path}/{workspace}/{project name}.
	lockKey = "pr/" + repoFull + "/" + projectDir + "/default/"
	// lockName is how /api/locks names that lock (the key without "pr/").
	lockName  = repoFull + "/" + projectDir + "/default/"
	apiSecret = "e2e-api-secret"
	author    = "alice"

	// testTimeout bounds a whole test; waitTimeout one awaited event.
	testTimeout = 4 * time.Minute
	waitTimeout = 90 * time.Second
)

// harness is one test's world: a redis-server, the GitHub stand-in with one
// repo holding a Terraform project, and two replicas sharing a data dir.
type harness struct {
	t     *testing.T
	ctx   context.Context
	redis *redistest.Server
	rdb   *redis.Client
	sim   *vcssim.Sim
	fleet *testdrive.Fleet
	r1    *testdrive.Replica
	r2    *testdrive.Replica
	repo  *vcssim.Repo
	logs  *testLog
	// dataDir is the replicas' shared data dir.
	dataDir string
	// redisProxies[i], with harnessOptions.recordRedis, is replica i+1's way
	// to Redis, recording every command it sends.
	redisProxies [2]*redistest.Proxy

	mu  sync.Mutex
	prs []*vcssim.PullRequest
}

type harnessOptions struct {
	// extraArgs are added to both replicas' flags.
	extraArgs []string
	// replicaArgs[i] are added to replica i+1's flags, after extraArgs.
	replicaArgs [2][]string
	// timeout bounds the whole test; zero means testTimeout.
	timeout time.Duration
	// extraProjects are Terraform projects the repo holds beside projectDir,
	// one per dir.
	extraProjects []string
	// terraformDir replaces the directory of the terraform the replicas run.
	terraformDir string
	// recordRedis puts a recording proxy between each replica and Redis.
	recordRedis bool
}

// newHarness starts everything and registers its teardown. When the test
// fails, the teardown prints the comments, statuses, Redis keys and the
// replicas' recent output.
func newHarness(t *testing.T, opts harnessOptions) *harness {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end suite skipped in -short mode")
	}
	timeout := testTimeout
	if opts.timeout > 0 {
		timeout = opts.timeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	h := &harness{t: t, ctx: ctx}

	h.redis = redistest.Start(t)
	h.rdb = h.redis.Client(t)

	logs := newTestLog(t)
	h.logs = logs
	sim, err := vcssim.New(vcssim.Options{Logf: logs.simLogf})
	Ok(t, err)
	h.sim = sim
	t.Cleanup(func() {
		if err := sim.Close(); err != nil {
			t.Logf("closing vcssim: %s", err)
		}
	})
	// Runs after the replicas stopped (cleanups run last-in first-out), so
	// requests made while shutting down are checked too.
	t.Cleanup(func() {
		if unknown := sim.UnknownRequests(); len(unknown) > 0 {
			t.Errorf("Atlantis made requests the GitHub stand-in does not implement: %v", unknown)
		}
	})

	files := vcssim.InDir(projectDir, vcssim.TerraformProject("base"))
	for _, dir := range opts.extraProjects {
		maps.Copy(files, vcssim.InDir(dir, vcssim.TerraformProject("base")))
	}
	h.repo, err = sim.CreateRepo(repoOwner, repoName, files)
	Ok(t, err)

	args := append([]string{"--api-secret=" + apiSecret}, opts.extraArgs...)
	dataDir := t.TempDir()
	h.dataDir = dataDir
	var redisAddrs []string
	if opts.recordRedis {
		for i := range h.redisProxies {
			h.redisProxies[i] = redistest.StartProxy(t, h.redis.Addr)
			h.redisProxies[i].RecordCommands()
			redisAddrs = append(redisAddrs, h.redisProxies[i].Addr)
		}
	}
	tfDir := terraformDir
	if opts.terraformDir != "" {
		tfDir = opts.terraformDir
	}
	// Stops the log forwarding once the replicas are gone; registered before
	// the fleet so that it runs after the fleet's cleanup.
	t.Cleanup(logs.close)
	fleet, err := testdrive.StartFleet(ctx, testdrive.FleetConfig{
		Binary:       atlantisBin,
		Replicas:     2,
		RedisAddr:    h.redis.Addr,
		DataDir:      dataDir,
		TerraformDir: tfDir,
		Sim:          sim,
		ExtraArgs:    args,
		ReplicaArgs:  opts.replicaArgs[:],
		// The replicas reach Redis through the proxies, if any.
		ReplicaRedisAddrs: redisAddrs,
		Log:               logs,
	})
	Ok(t, err)
	h.fleet = fleet
	t.Cleanup(fleet.Stop)
	h.r1, h.r2 = fleet.Replicas[0], fleet.Replicas[1]
	t.Cleanup(h.dumpOnFailure)
	return h
}

// events is a replica's webhook endpoint.
func events(r *testdrive.Replica) string { return r.URL + "/events" }

// openPR opens pull request number changing the project (the resource gets
// a new name, so the plan has something to add). No webhook is sent.
func (h *harness) openPR(number int) *vcssim.PullRequest {
	h.t.Helper()
	return h.openPROn(number, fmt.Sprintf("change-%d", number), projectDir)
}

// openPROn opens pull request number from branch, changing the project in
// each of dirs as openPR does. No webhook is sent.
func (h *harness) openPROn(number int, branch string, dirs ...string) *vcssim.PullRequest {
	h.t.Helper()
	files := map[string]string{}
	for _, dir := range dirs {
		maps.Copy(files, vcssim.InDir(dir, vcssim.TerraformProject(fmt.Sprintf("pr%d", number))))
	}
	pr, err := h.sim.OpenPullRequest(h.repo, number, branch, files, author)
	Ok(h.t, err)
	h.mu.Lock()
	h.prs = append(h.prs, pr)
	h.mu.Unlock()
	return pr
}

// mark is a point in a pull request's history: later comments have higher
// IDs, later statuses a later time.
type mark struct {
	commentID int64
	time      time.Time
}

func (h *harness) mark(pr *vcssim.PullRequest) mark {
	m := mark{time: time.Now()}
	for _, c := range h.sim.Comments(repoFull, pr.Number) {
		if c.ID > m.commentID {
			m.commentID = c.ID
		}
	}
	return m
}

// checkDelivered fails the test unless the replica answered the webhook 200.
func (h *harness) checkDelivered(what string, d vcssim.Delivery, err error) vcssim.Delivery {
	h.t.Helper()
	Ok(h.t, err)
	Assert(h.t, d.Status == http.StatusOK, "%s: Atlantis answered %d: %s", what, d.Status, d.ResponseBody)
	return d
}

// opened sends the pull_request "opened" webhook to r.
func (h *harness) opened(r *testdrive.Replica, pr *vcssim.PullRequest) (mark, vcssim.Delivery) {
	h.t.Helper()
	m := h.mark(pr)
	d, err := h.sim.SendPullRequestOpened(events(r), pr)
	return m, h.checkDelivered(fmt.Sprintf("opened #%d to %s", pr.Number, r.Name()), d, err)
}

// comment posts body on pr and sends the webhook to r.
func (h *harness) comment(r *testdrive.Replica, pr *vcssim.PullRequest, body string) (mark, vcssim.Delivery) {
	h.t.Helper()
	m := h.mark(pr)
	d, err := h.sim.SendComment(events(r), pr, author, body)
	return m, h.checkDelivered(fmt.Sprintf("%q on #%d to %s", body, pr.Number, r.Name()), d, err)
}

// closed merges and closes pr and sends the webhook to r.
func (h *harness) closed(r *testdrive.Replica, pr *vcssim.PullRequest) {
	h.t.Helper()
	d, err := h.sim.SendPullRequestClosed(events(r), pr, true)
	h.checkDelivered(fmt.Sprintf("closed #%d to %s", pr.Number, r.Name()), d, err)
}

// botComments are the comments Atlantis posted on pr after m.
func (h *harness) botComments(pr *vcssim.PullRequest, m mark) []vcssim.Comment {
	var out []vcssim.Comment
	for _, c := range h.sim.Comments(repoFull, pr.Number) {
		if c.ID > m.commentID && c.Author == h.sim.User() {
			out = append(out, c)
		}
	}
	return out
}

// waitComment waits for a comment by Atlantis on pr, posted after m, that
// satisfies match.
func (h *harness) waitComment(pr *vcssim.PullRequest, m mark, what string, match func(body string) bool) vcssim.Comment {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.ctx, waitTimeout)
	defer cancel()
	c, err := h.sim.WaitForComment(ctx, repoFull, pr.Number, func(c vcssim.Comment) bool {
		return c.ID > m.commentID && c.Author == h.sim.User() && match(c.Body)
	})
	if err != nil {
		h.t.Fatalf("waiting for %s on #%d: %s", what, pr.Number, err)
	}
	return c
}

// waitResponse waits for the next comment by Atlantis on pr after m,
// whatever it says.
func (h *harness) waitResponse(pr *vcssim.PullRequest, m mark, what string) vcssim.Comment {
	h.t.Helper()
	return h.waitComment(pr, m, what, func(string) bool { return true })
}

// waitDone waits until the commit status statusContext (e.g. "atlantis/plan") of
// pr's head is final (not pending) in a status set after m, and returns it.
// Atlantis comments before it sets the final status and lets go of the
// pull's working dir, so the next command on pr must wait for this.
func (h *harness) waitDone(pr *vcssim.PullRequest, m mark, statusContext string) vcssim.Status {
	h.t.Helper()
	return h.waitStatus(pr, m, statusContext+" to finish", func(st vcssim.Status) bool {
		return st.Context == statusContext && st.State != "pending"
	})
}

// waitStatus waits for any status of pr's head set after m that satisfies
// match.
func (h *harness) waitStatus(pr *vcssim.PullRequest, m mark, what string, match func(vcssim.Status) bool) vcssim.Status {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.ctx, waitTimeout)
	defer cancel()
	st, err := h.sim.WaitForStatus(ctx, repoFull, pr.HeadSHA, func(st vcssim.Status) bool {
		return !st.CreatedAt.Before(m.time) && match(st)
	})
	if err != nil {
		h.t.Fatalf("waiting for %s on #%d: %s", what, pr.Number, err)
	}
	return st
}

// plan comments `atlantis plan` on pr through r and waits until the plan
// finished, returning Atlantis's comment.
func (h *harness) plan(r *testdrive.Replica, pr *vcssim.PullRequest) vcssim.Comment {
	h.t.Helper()
	m, _ := h.comment(r, pr, "atlantis plan")
	c := h.waitComment(pr, m, "the plan", isPlanResult)
	h.waitDone(pr, m, "atlantis/plan")
	return c
}

// unlock comments `atlantis unlock` on pr through r and waits for the
// answer and for the lock to leave Redis.
func (h *harness) unlock(r *testdrive.Replica, pr *vcssim.PullRequest) {
	h.t.Helper()
	h.unlockEach([]*testdrive.Replica{r}, []*vcssim.PullRequest{pr})
}

// unlockEach comments `atlantis unlock` on prs[i] through replicas[i], one
// after the other, and waits for every answer and for the lock to leave
// Redis.
func (h *harness) unlockEach(replicas []*testdrive.Replica, prs []*vcssim.PullRequest) {
	h.t.Helper()
	for i, pr := range prs {
		m, _ := h.comment(replicas[i], pr, "atlantis unlock")
		h.waitComment(pr, m, "the unlock confirmation", isUnlocked)
	}
	h.waitNoLock()
	// Upstream comments once the unlock is done, so the pulls' lock indexes
	// are gone by now, where an enhanced replica did the unlock. A replica
	// without enhanced locking deletes the lock keys alone.
	for i, pr := range prs {
		if h.enhancedLockingEnabled(replicas[i]) {
			Assert(h.t, !h.exists(pullIndexKey(pr.Number)), "%s outlived `atlantis unlock`", pullIndexKey(pr.Number))
		}
	}
}

// Comment bodies, as upstream Atlantis words them.
var (
	isPlanResult = e2ekit.IsPlanResult
	// isPlanned is a successful plan of the project.
	isPlanned   = e2ekit.IsPlanned
	isLockedOut = e2ekit.IsLockedOut
	isUnlocked  = e2ekit.IsUnlocked
)

// lockedBy says whether body tells that pull number holds the lock.
func lockedBy(body string, number int) bool {
	return isLockedOut(body) && strings.Contains(body, fmt.Sprintf("unapplied plan from pull #%d.", number))
}

func isApplied(body string) bool {
	return strings.Contains(body, "Ran Apply for") && strings.Contains(body, "Apply complete!")
}

func isApplyDisabled(body string) bool {
	return strings.Contains(body, "Running `atlantis apply` is disabled.")
}

// lockDetail is one entry of upstream's GET /api/locks.
type lockDetail struct {
	Name   string
	PullID int `json:",string"`
}

// apiLocks lists the locks r reports on GET /api/locks: name -> pull.
func (h *harness) apiLocks(r *testdrive.Replica) map[string]int {
	h.t.Helper()
	body := h.api(r, http.MethodGet, "/api/locks", http.StatusOK)
	var listed struct{ Locks []lockDetail }
	if err := json.Unmarshal(body, &listed); err != nil {
		h.t.Fatalf("GET /api/locks on %s: %s: %s", r.Name(), err, body)
	}
	out := map[string]int{}
	for _, l := range listed.Locks {
		out[l.Name] = l.PullID
	}
	return out
}

// api calls r's HTTP API with the API secret and checks the status.
func (h *harness) api(r *testdrive.Replica, method, path string, want int) []byte {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, r.URL+path, nil)
	Ok(h.t, err)
	req.Header.Set("X-Atlantis-Token", apiSecret)
	resp, err := http.DefaultClient.Do(req)
	Ok(h.t, err)
	defer resp.Body.Close() // nolint: errcheck
	body, err := io.ReadAll(resp.Body)
	Ok(h.t, err)
	Assert(h.t, resp.StatusCode == want, "%s %s on %s: got %d, want %d: %s", method, path, r.Name(), resp.StatusCode, want, body)
	return body
}

// eventually polls cond until it holds or the wait times out.
func (h *harness) eventually(what string, cond func() (bool, string)) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.ctx, waitTimeout)
	defer cancel()
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, state := cond()
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			h.t.Fatalf("waiting for %s: %s; last seen: %s", what, ctx.Err(), state)
		case <-tick.C:
		}
	}
}

// dumpOnFailure prints what explains a failure: every comment and status,
// the Redis keys and the replicas' recent output.
func (h *harness) dumpOnFailure() {
	if !h.t.Failed() {
		return
	}
	var b strings.Builder
	h.mu.Lock()
	prs := append([]*vcssim.PullRequest(nil), h.prs...)
	h.mu.Unlock()
	for _, pr := range prs {
		fmt.Fprintf(&b, "\n=== comments on %s#%d ===\n", repoFull, pr.Number)
		for _, c := range h.sim.Comments(repoFull, pr.Number) {
			body := c.Body
			if len(body) > 1500 {
				body = body[:1500] + "..."
			}
			fmt.Fprintf(&b, "--- #%d by %s at %s:\n%s\n", c.ID, c.Author, c.CreatedAt.Format("15:04:05.000"), body)
		}
	}
	fmt.Fprintf(&b, "\n=== commit statuses ===\n")
	for _, st := range h.sim.Statuses(repoFull, "") {
		fmt.Fprintf(&b, "%s %.8s %s=%s %q\n", st.CreatedAt.Format("15:04:05.000"), st.SHA, st.Context, st.State, st.Description)
	}
	fmt.Fprintf(&b, "\n=== Redis keys ===\n%s", h.describeRedis())
	for _, r := range h.fleet.Replicas {
		out := r.Output()
		if len(out) > 24<<10 {
			out = "..." + out[len(out)-24<<10:]
		}
		fmt.Fprintf(&b, "\n=== recent output of %s ===\n%s\n", r.Name(), out)
	}
	h.t.Log(b.String())
}

// testLog is the replicas' and the Sim's log. Replica errors go to t.Log as
// they happen, without their stack traces; with E2E_VERBOSE=1 every line
// does. The full recent output is printed on failure by dumpOnFailure. It
// drops lines once the test is over, since t.Log panics then.
type testLog struct {
	t       *testing.T
	verbose bool

	mu     sync.Mutex
	closed bool
	line   []byte
	// kept are the lines containing keep, in full, for tests that read
	// every line of a kind (the tail each replica keeps may lose some).
	keep string
	kept []string
}

// keepLines starts keeping the lines containing substr.
func (l *testLog) keepLines(substr string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.keep = substr
}

// keptLines returns the lines kept so far.
func (l *testLog) keptLines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.kept...)
}

func newTestLog(t *testing.T) *testLog {
	return &testLog{t: t, verbose: os.Getenv("E2E_VERBOSE") != ""}
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.line = append(l.line, p...)
	for {
		i := bytes.IndexByte(l.line, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := string(l.line[:i])
		l.line = l.line[i+1:]
		if l.keep != "" && strings.Contains(line, l.keep) {
			l.kept = append(l.kept, line)
		}
		if l.closed {
			continue
		}
		if short, important := compactLogLine(line); important || l.verbose {
			l.t.Log(short)
		}
	}
}

// compactLogLine turns "[replica-1] {json log entry}" into
// "[replica-1] error caller: msg" and says whether it is an error.
func compactLogLine(line string) (string, bool) {
	prefix, rest, ok := strings.Cut(line, "] {")
	if !ok {
		return line, false
	}
	var entry struct {
		Level  string `json:"level"`
		Caller string `json:"caller"`
		Msg    string `json:"msg"`
	}
	if err := json.Unmarshal([]byte("{"+rest), &entry); err != nil {
		return line, false
	}
	msg := entry.Msg
	if len(msg) > 400 {
		msg = msg[:400] + "..."
	}
	important := entry.Level == "error" || entry.Level == "dpanic" || entry.Level == "panic" || entry.Level == "fatal"
	return fmt.Sprintf("%s] %s %s: %s", prefix, entry.Level, entry.Caller, msg), important
}

func (l *testLog) simLogf(format string, args ...any) {
	if !l.verbose {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.t.Logf(format, args...)
	}
}

func (l *testLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
}

// sortedKeys returns m's keys in order, for stable messages.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
