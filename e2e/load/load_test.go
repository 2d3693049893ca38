package load

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// The run's shape; LOAD_* variables change the first ones (see settings).
const (
	defaultProcesses   = 8
	defaultConcurrency = 4
	pulls              = 1000
	projects           = 200

	startTimeout = time.Minute
	// drainSlack bounds the wait for the outbox to empty after the traffic,
	// beyond the notice lease after which a failed delivery is taken over.
	drainSlack  = 40 * time.Second
	sampleEvery = 500 * time.Millisecond
)

// TestLoad runs random plan / unlock / close traffic from many worker
// processes sharing one real Redis, each with the enhanced stack a replica
// runs, records every operation and checks the history (check.go). Then, in
// the same run, the same traffic goes to upstream's own Redis database, the
// anchor, whose double grants are counted and never fail the test.
//
// make load runs it for a minute; `go test` for a few seconds.
func TestLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("the load run is skipped under -short")
	}
	cfg := loadSettings(t)
	srv := redistest.Start(t)
	client := srv.Client(t)

	enh := runPhase(t, srv.Addr, client, cfg, stackEnhanced, cfg.duration)
	Ok(t, client.FlushAll(context.Background()).Err())
	anchor := runPhase(t, srv.Addr, client, cfg, stackUpstream, cfg.anchor)

	v := enh.verdict
	fmt.Printf("LOAD ops=%d throughput=%.0f/s acquire-p50=%s acquire-p99=%s handover-p50=%s handover-p99=%s "+
		"peak-queue-depth=%d redis-bytes-per-lock=%d worker-rss=%.1fMiB double-grants=%d lost-handovers=%d duplicate-handovers=%d order-violations=%d\n",
		v.Ops, float64(v.Ops)/cfg.duration.Seconds(), percentile(v.Acquire, 50), percentile(v.Acquire, 99),
		percentile(v.Handover, 50), percentile(v.Handover, 99), enh.peakDepth, enh.bytesPerLock, float64(enh.workerRSS)/(1<<20),
		v.DoubleGrants, v.LostHandovers, v.DuplicateHandovers, v.OrderViolations)
	fmt.Printf("LOAD-RUN processes=%d concurrency=%d duration=%s notice-lease=%s pulls=%d projects=%d handovers=%d grants-compared=%d waiting-compared=%d claimed-p50=%s claimed-p99=%s locks-held=%d peak-queued=%d errors=%d anomalies=%d seed=%d cpus=%d loadavg=%s\n",
		cfg.processes, cfg.concurrency, cfg.duration, cfg.noticeLease, pulls, projects, v.Handovers, v.Grants, v.Waiting, percentile(v.Claimed, 50), percentile(v.Claimed, 99),
		enh.locks, enh.peakQueued, v.Errors, v.Anomalies, cfg.seed, runtime.NumCPU(), loadAverage())
	a := anchor.verdict
	fmt.Printf("LOAD-ANCHOR upstream-redis double-grants=%d ops=%d duration=%s errors=%d\n", a.DoubleGrants, a.Ops, cfg.anchor, a.Errors)

	if v.violations() > 0 || v.Errors > 0 {
		t.Errorf("the enhanced stack's history has %d violation(s) and %d failed operation(s) (seed %d):\n%s",
			v.violations(), v.Errors, cfg.seed, strings.Join(v.Problems, "\n"))
	}
	Assert(t, v.Handovers > 0, "no lock was handed over in %s: the run checked no queue", cfg.duration)
}

type settings struct {
	duration, anchor       time.Duration
	noticeLease            time.Duration
	processes, concurrency int
	seed                   uint64
}

// loadSettings reads LOAD_DURATION (default 6s), LOAD_ANCHOR_DURATION
// (default a third of it), LOAD_PROCESSES (default 8), LOAD_CONCURRENCY
// (requests in flight per process, default 4), LOAD_NOTICE_LEASE (the
// queue's --enhanced-locking-queue-notice-lease, default 20s) and LOAD_SEED.
func loadSettings(t *testing.T) settings {
	s := settings{
		duration:    envDuration(t, "LOAD_DURATION", 6*time.Second),
		noticeLease: envDuration(t, "LOAD_NOTICE_LEASE", defaultNoticeLease),
		processes:   envInt(t, "LOAD_PROCESSES", defaultProcesses),
		concurrency: envInt(t, "LOAD_CONCURRENCY", defaultConcurrency),
		seed:        uint64(envInt(t, "LOAD_SEED", int(time.Now().UnixNano()%1_000_000))),
	}
	s.anchor = envDuration(t, "LOAD_ANCHOR_DURATION", max(2*time.Second, (s.duration/3).Round(time.Second)))
	return s
}

func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	return env(t, name, def, "a positive duration such as 60s", time.ParseDuration)
}

func envInt(t *testing.T, name string, def int) int {
	return env(t, name, def, "a positive whole number", strconv.Atoi)
}

// env reads variable name with parse, or gives def when it is unset.
func env[T int | time.Duration](t *testing.T, name string, def T, want string, parse func(string) (T, error)) T {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	x, err := parse(v)
	if err != nil || x <= 0 {
		t.Fatalf("%s=%q: want %s", name, v, want)
	}
	return x
}

// phaseResult is one stack's run.
type phaseResult struct {
	verdict verdict
	// peakDepth is the longest queue seen, peakQueued the most entries in
	// all queues at once.
	peakDepth, peakQueued int
	locks                 int
	bytesPerLock          int64
	// workerRSS is the highest peak resident set of a worker.
	workerRSS int64
}

// runPhase runs the workers of one stack against Redis for duration and
// checks their history.
func runPhase(t *testing.T, addr string, client *redis.Client, cfg settings, stack string, duration time.Duration) phaseResult {
	dir := t.TempDir()
	procs := make([]*workerProc, cfg.processes)
	for i := range procs {
		procs[i] = startWorker(t, dir, workerConfig{
			Proc: i + 1, Redis: addr, Stack: stack, History: filepath.Join(dir, fmt.Sprintf("history-%d.jsonl", i+1)),
			Traffic: duration, Seed: cfg.seed, Concurrency: cfg.concurrency, Pulls: pulls, Projects: projects,
			NoticeLease: cfg.noticeLease,
		})
	}
	for _, p := range procs {
		p.expect(lineReady, startTimeout)
	}
	ctx := context.Background()
	baseline := usedMemory(t, client)
	var res phaseResult
	backend, err := backends.NewRedis(client, backends.RedisOptions{NoReleaseTimes: true})
	Ok(t, err)
	stopSampling := sampleQueues(t, backend, stack == stackEnhanced, &res)
	for _, p := range procs {
		p.send(lineStart)
	}
	for _, p := range procs {
		p.expect(lineTrafficDone, duration+startTimeout)
	}
	stopSampling()
	if stack == stackEnhanced {
		drain(t, client, cfg.noticeLease+drainSlack)
		locks, err := backend.List(ctx)
		Ok(t, err)
		res.locks = len(locks)
		if res.locks > 0 {
			res.bytesPerLock = (usedMemory(t, client) - baseline) / int64(res.locks)
		}
	}
	histories := make([]string, len(procs))
	for i, p := range procs {
		res.workerRSS = max(res.workerRSS, peakRSS(t, p.cmd.Process.Pid))
		p.send(lineStop)
		p.expect(lineDone, startTimeout)
		if err := p.wait(); err != nil {
			t.Errorf("worker %d: %v:\n%s", p.cfg.Proc, err, p.logTail())
		}
		histories[i] = p.cfg.History
	}
	in := checkInput{AgingStep: agingStep, Queued: map[string]bool{}}
	if stack == stackEnhanced {
		queues, err := backend.Queues(ctx)
		Ok(t, err)
		for _, q := range queues {
			for _, e := range q.Entries {
				in.Queued[e.ID] = true
			}
		}
		in.Undelivered = outboxLength(t, client)
	}
	in.Records, err = readHistory(histories)
	Ok(t, err)
	res.verdict = check(in)
	return res
}

// sampleQueues records the deepest queue until the returned function is
// called, when on.
func sampleQueues(t *testing.T, backend *backends.Redis, on bool, res *phaseResult) (stop func()) {
	if !on {
		return func() {}
	}
	return every(sampleEvery, func(ctx context.Context) bool {
		queues, err := backend.Queues(ctx)
		if err != nil {
			if ctx.Err() == nil {
				t.Errorf("sampling the queues: %v", err)
			}
			return false
		}
		total := 0
		for _, q := range queues {
			res.peakDepth = max(res.peakDepth, len(q.Entries))
			total += len(q.Entries)
		}
		res.peakQueued = max(res.peakQueued, total)
		return true
	})
}

// drain waits until every hand-over notice is acknowledged.
func drain(t *testing.T, client *redis.Client, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for outboxLength(t, client) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
}

// outboxLength counts the notices not yet acknowledged: the outbox key of a
// standalone Redis without a key prefix (backends/redis_keys.go).
func outboxLength(t *testing.T, client *redis.Client) int {
	n, err := client.ZCard(context.Background(), "outbox").Result()
	Ok(t, err)
	return int(n)
}

func usedMemory(t *testing.T, client *redis.Client) int64 {
	info, err := client.Info(context.Background(), "memory").Result()
	Ok(t, err)
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			Ok(t, err)
			return n
		}
	}
	t.Fatalf("INFO memory has no used_memory:\n%s", info)
	return 0
}

// peakRSS is a process's peak resident set in bytes (VmHWM).
func peakRSS(t *testing.T, pid int) int64 {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	Ok(t, err)
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			Ok(t, err)
			return kb << 10
		}
	}
	t.Fatalf("/proc/%d/status has no VmHWM", pid)
	return 0
}

func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	d := s[(len(s)-1)*p/100]
	if d > 100*time.Millisecond {
		return d.Round(time.Millisecond)
	}
	return d.Round(10 * time.Microsecond)
}

func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(data))[:3], ",")
}

// workerProc is one worker process this test started.
type workerProc struct {
	t     *testing.T
	cfg   workerConfig
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines <-chan string
	log   string
}

func startWorker(t *testing.T, dir string, cfg workerConfig) *workerProc {
	t.Helper()
	exe, err := os.Executable()
	Ok(t, err)
	encoded, err := json.Marshal(cfg)
	Ok(t, err)
	p := &workerProc{t: t, cfg: cfg, cmd: exec.Command(exe), log: filepath.Join(dir, fmt.Sprintf("worker-%d.log", cfg.Proc))}
	p.cmd.Env = append(os.Environ(), workerEnv+"="+string(encoded))
	// A worker dies with the test, whatever ends it.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	logFile, err := os.Create(p.log)
	Ok(t, err)
	p.cmd.Stderr = logFile
	stdout, err := p.cmd.StdoutPipe()
	Ok(t, err)
	p.stdin, err = p.cmd.StdinPipe()
	Ok(t, err)
	Ok(t, p.cmd.Start())
	lines := make(chan string, 4)
	p.lines = lines
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			_ = p.wait()
		}
		logFile.Close() // nolint: errcheck
	})
	return p
}

func (p *workerProc) send(line string) {
	p.t.Helper()
	if _, err := fmt.Fprintln(p.stdin, line); err != nil {
		p.t.Fatalf("telling worker %d %q: %v\n%s", p.cfg.Proc, line, err, p.logTail())
	}
}

func (p *workerProc) expect(want string, timeout time.Duration) {
	p.t.Helper()
	select {
	case got, ok := <-p.lines:
		if !ok {
			p.t.Fatalf("worker %d exited waiting to say %q:\n%s", p.cfg.Proc, want, p.logTail())
		}
		if got != want {
			p.t.Fatalf("worker %d said %q, want %q:\n%s", p.cfg.Proc, got, want, p.logTail())
		}
	case <-time.After(timeout):
		p.t.Fatalf("worker %d did not say %q within %s:\n%s", p.cfg.Proc, want, timeout, p.logTail())
	}
}

// wait closes the worker's stdin and waits for it to exit, once its output
// is read.
func (p *workerProc) wait() error {
	p.stdin.Close() // nolint: errcheck
	for range p.lines {
	}
	return p.cmd.Wait()
}

func (p *workerProc) logTail() string {
	data, err := os.ReadFile(p.log)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-30):], "\n")
}
