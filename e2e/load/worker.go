package load

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/runatlantis/atlantis/server/core/locking"
	upstreamredis "github.com/runatlantis/atlantis/server/core/redis"
	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/legacydb"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/queue"
	redisclient "github.com/atlantis-enhanced/atlantis/server/core/redis"
)

// workerEnv, set to a workerConfig as JSON, makes the test binary a worker.
const workerEnv = "ATLANTIS_LOAD_WORKER"

// The stacks a worker can run.
const (
	// stackEnhanced is the enhanced Redis backend behind the adapter, with
	// the priority queue and its worker, as a replica runs it with
	// --locking-db-type=redis (upstream's database keeps pull status).
	stackEnhanced = "enhanced"
	// stackUpstream is upstream's own Redis database, the anchor.
	stackUpstream = "upstream"
)

// The worker's protocol with the test, one line each way at a time.
const (
	lineReady       = "ready"        // worker: stack built
	lineStart       = "start"        // test: send traffic
	lineTrafficDone = "traffic-done" // worker: traffic sent; hand-overs still delivered
	lineStop        = "stop"         // test: stop delivering, write the history
	lineDone        = "done"         // worker: history written
)

// The queue's settings: entries outlive any run, so none expires, and a
// notice a delivery failed on is taken over within the drain.
const (
	queueTimeout       = 24 * time.Hour
	defaultNoticeLease = 20 * time.Second
)

// clockEvery is how often a worker samples the wall clock against the
// monotonic one.
const clockEvery = 250 * time.Millisecond

type workerConfig struct {
	Proc        int
	Redis       string
	Stack       string
	History     string
	Traffic     time.Duration
	Seed        uint64
	Concurrency int
	Pulls       int
	Projects    int
	NoticeLease time.Duration
}

// IsWorker says whether this process was started as a load worker.
func IsWorker() bool { return os.Getenv(workerEnv) != "" }

// RunWorker runs this process as one load worker and returns its exit code.
func RunWorker() int {
	var cfg workerConfig
	if err := json.Unmarshal([]byte(os.Getenv(workerEnv)), &cfg); err != nil {
		fmt.Fprintf(os.Stderr, "load worker: reading %s: %v\n", workerEnv, err)
		return 2
	}
	if err := runWorker(cfg, bufio.NewScanner(os.Stdin), os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "load worker %d: %v\n", cfg.Proc, err)
		return 1
	}
	return 0
}

func runWorker(cfg workerConfig, in *bufio.Scanner, out io.Writer) error {
	rec, err := newRecorder(cfg.History, cfg.Proc)
	if err != nil {
		return err
	}
	logger := &stderrLogger{proc: cfg.Proc}
	var s *stack
	switch cfg.Stack {
	case stackEnhanced:
		s, err = enhancedStack(cfg.Redis, cfg.NoticeLease, rec, logger)
	case stackUpstream:
		s, err = upstreamStack(cfg.Redis)
	default:
		err = fmt.Errorf("unknown stack %q: use %s or %s", cfg.Stack, stackEnhanced, stackUpstream)
	}
	if err != nil {
		rec.close() // nolint: errcheck
		return err
	}
	tr := &traffic{locks: s.locks, track: s.track, rec: rec, pulls: cfg.Pulls, projects: cfg.Projects}
	if s.start != nil {
		s.start(tr)
	}
	if err := exchange(in, out, lineReady, lineStart); err != nil {
		s.stop()
		return errors.Join(err, s.close(), rec.close())
	}

	rec.sampleClock()
	stopClock := every(clockEvery, func(context.Context) bool {
		rec.sampleClock()
		return true
	})
	until := monoNow() + cfg.Traffic.Nanoseconds()
	var wg sync.WaitGroup
	for g := range cfg.Concurrency {
		rng := rand.New(rand.NewPCG(cfg.Seed, uint64(cfg.Proc*1000+g)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr.run(rng, until)
		}()
	}
	wg.Wait()

	err = exchange(in, out, lineTrafficDone, lineStop)
	s.stop()
	stopClock()
	rec.sampleClock()
	logger.summary()
	err = errors.Join(err, s.close(), rec.close())
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(out, lineDone)
	return err
}

// exchange says said and waits for want.
func exchange(in *bufio.Scanner, out io.Writer, said, want string) error {
	if _, err := fmt.Fprintln(out, said); err != nil {
		return err
	}
	if !in.Scan() {
		return fmt.Errorf("waiting for %q: the test closed the pipe (%v)", want, in.Err())
	}
	if got := in.Text(); got != want {
		return fmt.Errorf("waiting for %q, the test said %q", want, got)
	}
	return nil
}

// every calls f each interval until it returns false or the returned stop
// is called, which waits for f to return.
func every(interval time.Duration, f func(ctx context.Context) bool) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if !f(ctx) {
					return
				}
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// stack is what a worker sends its traffic through.
type stack struct {
	locks *locking.Client
	track func(repo models.Repo, pull int, plan bool) func()
	// start starts background work once the traffic exists; stop ends it.
	start func(*traffic)
	stop  func()
	close func() error
}

// enhancedStack builds the enhanced locking of a replica as server.go does,
// with recorders around the queue's edges (recorders.go).
func enhancedStack(addr string, noticeLease time.Duration, rec *recorder, logger logging.SimpleLogging) (*stack, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := redisclient.NewClient(ctx, redisclient.Config{Mode: redisclient.ModeStandalone, Addrs: []string{addr}, PoolSize: 20})
	if err != nil {
		return nil, err
	}
	legacyDB, err := upstreamDatabase(addr)
	if err != nil {
		client.Close() // nolint: errcheck
		return nil, err
	}
	legacy, err := legacydb.Guard(legacyDB, legacydb.Options{Logger: logger})
	if err != nil {
		return nil, errors.Join(err, client.Close(), legacyDB.Close())
	}
	// The legacy database is upstream's Redis database on these very keys,
	// so, as the server decides, no release times and no legacy copies.
	backend, err := backends.NewRedis(client, backends.RedisOptions{Logger: logger, NoReleaseTimes: true})
	if err != nil {
		return nil, errors.Join(err, client.Close(), legacyDB.Close())
	}
	rules, err := queue.ParseRules([]byte(priorityRules), "the load run's priority rules")
	if err != nil {
		return nil, errors.Join(err, client.Close(), legacyDB.Close())
	}
	comments := &commenter{rec: rec}
	notifier := queue.NewNotifier(backend, comments, true, logger)
	policy := queue.NewPolicy(rules, queueTimeout, notifier)
	adapter := enhanced.NewAdapter(legacy, backend, enhanced.AdapterOptions{
		BackendName: "redis",
		Queue:       policyRecorder{Policy: policy, rec: rec},
		Retry:       enhanced.RetryPolicy{MaxAttempts: 3, Backoff: 200 * time.Millisecond},
		Logger:      logger,
	})
	s := &stack{locks: locking.NewClient(adapter), track: policy.Track}
	workerCtx, stopWorker := context.WithCancel(context.Background())
	done := make(chan struct{})
	s.start = func(tr *traffic) {
		worker := queue.NewWorker(&outboxRecorder{QueueBackend: backend, watcher: backend, rec: rec, comments: comments},
			notifier, planner{traffic: tr}, queue.WorkerOptions{AutoPlan: true, Lease: noticeLease, Logger: logger})
		go func() {
			defer close(done)
			worker.Run(workerCtx)
		}()
	}
	s.stop = func() {
		stopWorker()
		<-done
		policy.Wait()
	}
	s.close = func() error {
		return errors.Join(adapter.Close(), client.Close(), legacyDB.Close())
	}
	return s, nil
}

// upstreamStack is upstream's Redis database alone, as a replica with
// --locking-db-type=redis and no enhanced locking runs it.
func upstreamStack(addr string) (*stack, error) {
	database, err := upstreamDatabase(addr)
	if err != nil {
		return nil, err
	}
	return &stack{locks: locking.NewClient(database), stop: func() {}, close: database.Close}, nil
}

func upstreamDatabase(addr string) (*upstreamredis.RedisDB, error) {
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("redis address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return nil, fmt.Errorf("redis address %q: %w", addr, err)
	}
	return upstreamredis.NewWithConfig(upstreamredis.Config{Hostname: host, Port: port})
}

// stderrLogger writes a worker's first warnings and errors to stderr, which
// the test keeps, and counts the rest.
type stderrLogger struct {
	enhanced.NopLogger
	proc int

	mu     sync.Mutex
	logged int
}

const maxLogged = 20

func (l *stderrLogger) Warn(format string, args ...any) { l.log("WARN", format, args...) }
func (l *stderrLogger) Err(format string, args ...any)  { l.log("ERROR", format, args...) }

func (l *stderrLogger) With(...any) logging.SimpleLogging        { return l }
func (l *stderrLogger) WithHistory(...any) logging.SimpleLogging { return l }

func (l *stderrLogger) log(level, format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.logged++
	if l.logged <= maxLogged {
		fmt.Fprintf(os.Stderr, "load worker %d: %s: %s\n", l.proc, level, fmt.Sprintf(format, args...))
	}
}

func (l *stderrLogger) summary() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.logged > maxLogged {
		fmt.Fprintf(os.Stderr, "load worker %d: %d more warnings and errors not shown\n", l.proc, l.logged-maxLogged)
	}
}
