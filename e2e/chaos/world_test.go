package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
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
	author    = "alice"
	apiSecret = "chaos-api-secret"

	// scenarioTimeout bounds one scenario, world included.
	scenarioTimeout = 4 * time.Minute
	// answerTimeout bounds the wait for Atlantis's answer to one command.
	answerTimeout = 90 * time.Second
)

// The repo's projects: the background traffic contends for trafficDirs,
// two pulls each; a scenario drives scriptDir step by step, and plans
// probeDir, free until then, to see what a new plan gets in the middle of a
// fault.
var (
	allDirs     = []string{"alpha", "beta", scriptDir, probeDir}
	trafficDirs = allDirs[:2]
)

const (
	scriptDir = "gamma"
	probeDir  = "delta"
)

// lockStore is the Redis topology enhanced locking runs on.
type lockStore int

const (
	// standalone also holds upstream's pull status, as in the e2e suite.
	standalone lockStore = iota
	// sentinel is a master, its replica and a sentinel; upstream's pull
	// status lives in a standalone server of its own.
	sentinel
	// cluster is three masters with a replica each; upstream's pull status
	// lives in a standalone server of its own.
	cluster
)

type worldOptions struct {
	store lockStore
	// fsync is the standalone server's appendfsync policy; empty runs it
	// without an append-only file.
	fsync string
	// replicas is how many atlantis replicas run; zero means two.
	replicas int
	// args are added to every replica's flags.
	args []string
}

// world is one scenario's: Redis, the GitHub stand-in with a repo of three
// projects, replicas sharing a data dir, the history they make, and the
// processes the scenario may signal.
type world struct {
	t    *testing.T
	ctx  context.Context
	name string
	sim  *vcssim.Sim
	repo *vcssim.Repo
	// fleet's replicas are every process started, dead ones included.
	fleet *testdrive.Fleet

	// Exactly one of these is set, as worldOptions.store says.
	redis    *redistest.Server
	sentinel *redistest.Sentinel
	cluster  *redistest.Cluster
	// locks reads the locks from whatever store holds them.
	locks redis.UniversalClient

	// spans is the workflow's record of each command's run; stalls holds
	// the files that stall one pull's plans (e2ekit.Workflow.Stall).
	spans, stalls string
	// logPath holds every replica's output.
	logPath string
	hist    *history
	gate    *gate

	mu       sync.Mutex
	lastPull int
	pulls    []*vcssim.PullRequest
	// deaths are the replicas killed, by pid: when.
	deaths map[int]time.Time
}

// newWorld starts Redis, the GitHub stand-in and the replicas, and the
// sampler of the locks. Everything stops when the test ends.
func newWorld(t *testing.T, name string, opts worldOptions) *world {
	t.Helper()
	if testing.Short() {
		t.Skip("the chaos suite is skipped in -short mode")
	}
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	t.Cleanup(cancel)
	dir := t.TempDir()
	w := &world{
		t: t, ctx: ctx, name: name,
		spans:  filepath.Join(dir, "spans"),
		stalls: filepath.Join(dir, "stalls"),
		gate:   newGate(),
		deaths: map[int]time.Time{},
	}
	w.hist = newHistory()
	Ok(t, os.Mkdir(w.stalls, 0o700))

	statusAddr, lockArgs := w.startRedis(opts)
	sim, err := vcssim.New(vcssim.Options{Logf: func(string, ...any) {}})
	Ok(t, err)
	w.sim = sim
	t.Cleanup(func() { _ = sim.Close() })
	files := map[string]string{}
	for _, d := range allDirs {
		maps.Copy(files, vcssim.InDir(d, vcssim.TerraformProject("base")))
	}
	w.repo, err = sim.CreateRepo(repoOwner, repoName, files)
	Ok(t, err)

	workflow, err := e2ekit.Workflow{Spans: w.spans, Stall: filepath.Join(w.stalls, "$PULL_NUM")}.RepoConfig()
	Ok(t, err)
	args := append([]string{
		"--api-secret=" + apiSecret,
		"--repo-config-json=" + workflow,
		"--enhanced-locking-priority-queue",
		"--enhanced-locking-auto-plan",
		// A replica that dies announcing a hand-over delays it this long,
		// and one that dies running a command holds its pull back this long.
		"--enhanced-locking-queue-notice-lease=3s",
		"--enhanced-locking-command-lease-ttl=10s",
	}, lockArgs...)
	replicas := opts.replicas
	if replicas == 0 {
		replicas = 2
	}
	logs := w.logFile()
	fleet, err := testdrive.StartFleet(ctx, testdrive.FleetConfig{
		Binary:       bins.Atlantis,
		Replicas:     replicas,
		RedisAddr:    statusAddr,
		DataDir:      filepath.Join(dir, "data"),
		TerraformDir: bins.TerraformDir,
		Sim:          sim,
		ExtraArgs:    append(args, opts.args...),
		Log:          logs,
	})
	Ok(t, err)
	w.fleet = fleet
	t.Cleanup(fleet.Stop)
	t.Cleanup(w.dumpOnFailure)
	go w.sample()
	return w
}

// startRedis starts the store opts asks for and returns the address of the
// server holding upstream's pull status and the flags that point enhanced
// locking at the store.
func (w *world) startRedis(opts worldOptions) (string, []string) {
	t := w.t
	switch opts.store {
	case sentinel, cluster:
		// Upstream's pull status needs a standalone server of its own.
		status := redistest.Start(t).Addr
		if opts.store == cluster {
			w.cluster = redistest.StartReplicatedCluster(t)
			w.locks = w.cluster.Client(t)
			return status, []string{"--enhanced-locking-redis-mode=cluster", "--enhanced-locking-redis-addrs=" + strings.Join(w.cluster.Addrs, ",")}
		}
		// Persistence on both nodes, as Redis's replication docs require: a
		// master that restarts empty can be promoted again by a second
		// failover (the machine stalls, the sentinel's down-after is 1 s)
		// and wipe the replica that has the data.
		w.sentinel = redistest.StartSentinel(t, redistest.WithNodeOptions(redistest.WithAppendFsync("always")))
		w.locks = w.sentinel.Client(t)
		return status, []string{
			"--enhanced-locking-redis-mode=sentinel",
			"--enhanced-locking-redis-addrs=" + strings.Join(w.sentinel.SentinelAddrs, ","),
			"--enhanced-locking-redis-sentinel-master=" + w.sentinel.MasterName,
		}
	default:
		var ropts []redistest.Option
		if opts.fsync != "" {
			ropts = append(ropts, redistest.WithAppendFsync(opts.fsync))
		}
		w.redis = redistest.Start(t, ropts...)
		w.locks = w.redis.Client(t)
		return w.redis.Addr, nil
	}
}

// logFile is where every replica's output goes, whole: in
// $ATLANTIS_TEST_ARTIFACTS when set (kept), else in the test's temporary
// directory. Failures print its path and each replica's last lines.
func (w *world) logFile() *os.File {
	dir := os.Getenv("ATLANTIS_TEST_ARTIFACTS")
	if dir == "" {
		dir = w.t.TempDir()
	}
	Ok(w.t, os.MkdirAll(dir, 0o755))
	w.logPath = filepath.Join(dir, "chaos-"+w.name+".log")
	f, err := os.Create(w.logPath)
	Ok(w.t, err)
	w.t.Cleanup(func() { _ = f.Close() })
	return f
}

// live are the replicas running now.
func (w *world) live() []*testdrive.Replica {
	var out []*testdrive.Replica
	for _, r := range w.fleet.Replicas {
		if r.Running() {
			out = append(out, r)
		}
	}
	return out
}

// pick is the live replica for an actor's turn-th command: turns alternate
// between replicas.
func (w *world) pick(turn int) *testdrive.Replica {
	live := w.live()
	if len(live) == 0 {
		return nil
	}
	return live[turn%len(live)]
}

// kill SIGKILLs replica r and notes when, so its unfinished runs end there.
func (w *world) kill(r *testdrive.Replica) {
	pid := r.PID()
	r.Kill()
	w.mu.Lock()
	w.deaths[pid] = time.Now()
	w.mu.Unlock()
	w.t.Logf("%s (pid %d) killed", r.Name(), pid)
}

// restart starts a new replica in place of a dead one.
func (w *world) restart(name string) *testdrive.Replica {
	r, err := w.fleet.StartReplica(w.ctx, name)
	Ok(w.t, err)
	w.t.Logf("%s started again (pid %d)", name, r.PID())
	return r
}

// openPull opens the next pull request, changing dir with a file of its own
// so that any two pulls merge cleanly. No webhook is sent: the pull plans
// when told to.
func (w *world) openPull(dir string) *vcssim.PullRequest {
	w.mu.Lock()
	w.lastPull++
	n := w.lastPull
	w.mu.Unlock()
	name := fmt.Sprintf("pr%d", n)
	files := map[string]string{}
	for _, content := range vcssim.TerraformProject(name) {
		files[dir+"/"+name+".tf"] = content
	}
	pr, err := w.sim.OpenPullRequest(w.repo, n, fmt.Sprintf("change-%d", n), files, author)
	Ok(w.t, err)
	w.mu.Lock()
	w.pulls = append(w.pulls, pr)
	w.mu.Unlock()
	w.hist.pullDir(n, dir)
	return pr
}

// send delivers one command or event for pr to r and records it in the
// history. It returns the last comment on pr before it, from which to look
// for the answer, and whether r answered 200.
func (w *world) send(r *testdrive.Replica, pr *vcssim.PullRequest, kind opKind) (int64, bool) {
	since := w.lastComment(pr)
	at := time.Now()
	var d vcssim.Delivery
	var err error
	target := r.URL + "/events"
	switch kind {
	case opMerge:
		// Merged by an earlier attempt, it is closed again.
		d, err = w.sim.SendPullRequestClosed(target, pr, true)
	default:
		d, err = w.sim.SendComment(target, pr, author, string(kind))
	}
	ok := err == nil && d.Status == http.StatusOK
	w.hist.op(op{at: at, pull: pr.Number, kind: kind, replica: r.Name(), ok: ok})
	if took := time.Since(at); !ok || took > 5*time.Second {
		w.t.Logf("%s on #%d to %s at %s: answered %d after %s: %s (%v)", kind, pr.Number, r.Name(), at.Format("15:04:05.000"),
			d.Status, took.Round(time.Millisecond), strings.TrimSpace(d.ResponseBody), err)
	}
	return since, ok
}

// lastComment is the ID of the last comment on pr.
func (w *world) lastComment(pr *vcssim.PullRequest) int64 {
	var last int64
	for _, c := range w.sim.Comments(repoFull, pr.Number) {
		last = max(last, c.ID)
	}
	return last
}

// awaitComment waits for a comment by Atlantis on pr after since that
// satisfies match, until timeout, or until r (when not nil) dies.
func (w *world) awaitComment(pr *vcssim.PullRequest, since int64, r *testdrive.Replica, timeout time.Duration, match func(string) bool) (vcssim.Comment, bool) {
	deadline := time.Now().Add(timeout)
	for {
		for _, c := range w.sim.Comments(repoFull, pr.Number) {
			if c.ID > since && c.Author == w.sim.User() && match(c.Body) {
				return c, true
			}
		}
		if time.Now().After(deadline) || w.ctx.Err() != nil || (r != nil && !r.Running()) {
			return vcssim.Comment{}, false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// isAnswer is Atlantis's answer to a command, whatever came of it: any
// comment but the queue's, which come on their own.
func isAnswer(body string) bool {
	return !e2ekit.IsQueuePosition(body) && !e2ekit.IsHandedOver(body)
}

// holder is the pull holding dir's lock by Redis, 0 when it is free.
func (w *world) holder(ctx context.Context, dir string) (int, error) {
	return e2ekit.LockHolder(ctx, w.locks, e2ekit.LockKey(repoFull, dir))
}

// sample records who holds each lock by Redis, every 50 ms, until the
// scenario ends; a read that fails records the lock as unknown.
func (w *world) sample() {
	for w.ctx.Err() == nil {
		for _, dir := range allDirs {
			from := time.Now()
			ctx, cancel := context.WithTimeout(w.ctx, 250*time.Millisecond)
			n, err := w.holder(ctx, dir)
			cancel()
			if err != nil {
				n = unknownHolder
			}
			w.hist.sample(dir, n, from)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// queued are the pulls waiting in dir's queue by r's API, head first.
func (w *world) queued(r *testdrive.Replica, dir string) ([]int, error) {
	ctx, cancel := context.WithTimeout(w.ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.URL+"/api/locks/queue-status", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-Atlantis-Token", apiSecret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close() // nolint: errcheck
	var status struct {
		Data struct {
			Locks []struct {
				Path  string
				Queue []struct {
					PullNumber int `json:"pull_number"`
				}
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&status); err != nil {
		return nil, fmt.Errorf("GET /api/locks/queue-status on %s (%s): %w", r.Name(), resp.Status, err)
	}
	var pulls []int
	for _, l := range status.Data.Locks {
		if l.Path == dir {
			for _, e := range l.Queue {
				pulls = append(pulls, e.PullNumber)
			}
		}
	}
	return pulls, nil
}

// waitUntil polls cond every 50 ms until it holds, failing the test after
// timeout with what cond last said.
func (w *world) waitUntil(what string, timeout time.Duration, cond func() (bool, string)) {
	w.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) || w.ctx.Err() != nil {
			w.t.Fatalf("%s: waiting for %s: gave up after %s; last seen: %s", w.name, what, timeout, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stall makes pr's plans wait in their first step until unstall.
func (w *world) stall(pr *vcssim.PullRequest) {
	Ok(w.t, os.WriteFile(filepath.Join(w.stalls, strconv.Itoa(pr.Number)), nil, 0o600))
}

func (w *world) unstall(pr *vcssim.PullRequest) {
	Ok(w.t, os.Remove(filepath.Join(w.stalls, strconv.Itoa(pr.Number))))
}

// redisServers are every Redis process of the world's store.
func (w *world) redisServers() []*redistest.Server {
	switch {
	case w.sentinel != nil:
		return append([]*redistest.Server{w.sentinel.Master, w.sentinel.Replica}, w.sentinel.Sentinels...)
	case w.cluster != nil:
		return append(append([]*redistest.Server(nil), w.cluster.Nodes...), w.cluster.Replicas...)
	default:
		return []*redistest.Server{w.redis}
	}
}

// lastLines is the end of a log file, or why it cannot be read.
func lastLines(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// dumpOnFailure prints what explains a failure: the history's findings are
// in the failure itself; here the replicas' recent output and each pull's
// comments.
func (w *world) dumpOnFailure() {
	if !w.t.Failed() {
		return
	}
	var b strings.Builder
	w.mu.Lock()
	pulls := append([]*vcssim.PullRequest(nil), w.pulls...)
	w.mu.Unlock()
	for _, pr := range pulls {
		fmt.Fprintf(&b, "\n=== #%d (%s) ===\n", pr.Number, w.hist.dirOf(pr.Number))
		for _, c := range w.sim.Comments(repoFull, pr.Number) {
			first, _, _ := strings.Cut(c.Body, "\n")
			fmt.Fprintf(&b, "%s %s: %.200s\n", c.CreatedAt.Format("15:04:05.000"), c.Author, first)
		}
	}
	for _, srv := range w.redisServers() {
		fmt.Fprintf(&b, "\n=== last lines of redis-server %s ===\n%s\n", srv.Addr, lastLines(filepath.Join(srv.Dir, "redis.log"), 40))
	}
	fmt.Fprintf(&b, "\nevery replica's output: %s\n", w.logPath)
	for _, r := range w.fleet.Replicas {
		out := r.Output()
		if len(out) > 16<<10 {
			out = "..." + out[len(out)-16<<10:]
		}
		fmt.Fprintf(&b, "\n=== recent output of %s (pid %d) ===\n%s\n", r.Name(), r.PID(), out)
	}
	w.t.Log(b.String())
}
