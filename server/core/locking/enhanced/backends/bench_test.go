package backends

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// pairBench is one backend's acquire + release of the same free lock, by one
// client, through TryLock and Unlock, which all three have.
type pairBench struct {
	name string
	pair func() error
}

// pairBenches sets up the backends on srv. Upstream's BoltDB is opened as the
// upstream server opens it (boltdb.New), so it fsyncs every write, which is
// the real cost of it.
func pairBenches(tb testing.TB, srv *redistest.Server) []pairBench {
	ctx := context.Background()
	lock := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	project, workspace := lock.Project, lock.Workspace
	bolt := newUpstreamBoltDB(tb)
	upstream := newUpstreamRedis(tb, srv.Client(tb))
	ours := openRedis(tb, srv.Client(tb), RedisOptions{})
	check := func(acquired bool, _ models.ProjectLock, err error) error {
		if err == nil && !acquired {
			err = fmt.Errorf("lock not acquired")
		}
		return err
	}
	return []pairBench{
		{"upstream-boltdb", func() error {
			if err := check(bolt.TryLock(lock)); err != nil {
				return err
			}
			_, err := bolt.Unlock(project, workspace)
			return err
		}},
		{"upstream-redis", func() error {
			if err := check(upstream.TryLock(lock)); err != nil {
				return err
			}
			_, err := upstream.Unlock(project, workspace)
			return err
		}},
		{"enhanced-redis", func() error {
			if err := check(ours.TryLock(ctx, enhancedtest.Request(lock))); err != nil {
				return err
			}
			_, err := ours.Unlock(ctx, project, workspace)
			return err
		}},
	}
}

func BenchmarkPairLatency(b *testing.B) {
	srv := redistest.Start(b)
	for _, bench := range pairBenches(b, srv) {
		b.Run(bench.name, func(b *testing.B) { runPairs(b, bench.pair) })
	}
}

func runPairs(b *testing.B, pair func() error) {
	if err := pair(); err != nil { // warm up: connections, script cache
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		if err := pair(); err != nil {
			b.Fatal(err)
		}
	}
}

const contentionClients = 8

// BenchmarkContention has 8 replicas, each with its own connection, try locks
// spread over a number of lock keys; a replica that gets one releases it at
// once. One op is one attempt (plus its release when granted).
func BenchmarkContention(b *testing.B) {
	srv := redistest.Start(b)
	for _, locks := range []int{1, 100} {
		b.Run(fmt.Sprintf("locks=%d", locks), func(b *testing.B) {
			grants := runContention(b, srv, locks)
			b.ReportMetric(float64(grants)/b.Elapsed().Seconds(), "grants/s")
		})
	}
}

func runContention(b *testing.B, srv *redistest.Server, locks int) int64 {
	ctx := context.Background()
	replicas := make([]*Redis, contentionClients)
	for i := range replicas {
		replicas[i] = openRedis(b, srv.Client(b), RedisOptions{})
	}
	var grants atomic.Int64
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for i, r := range replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := next.Add(1); n <= int64(b.N); n = next.Add(1) {
				lock := enhancedtest.NewLock("org/repo", fmt.Sprintf("dir%d", n%int64(locks)), "default", "", i+1)
				acquired, _, err := r.TryLock(ctx, enhancedtest.Request(lock))
				if err != nil {
					b.Error(err)
					return
				}
				if !acquired {
					continue
				}
				grants.Add(1)
				if _, err := r.UnlockIfOwnedByPull(ctx, lock.Project, lock.Workspace, lock.Pull.Num); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return grants.Load()
}

// TestBenchSummary prints the benchmark figures on two lines. It measures,
// asserts nothing, and runs only with ATLANTIS_BENCH_SUMMARY=1. A ratio is
// the reference's latency over enhanced-redis's: above 1, enhanced is faster.
func TestBenchSummary(t *testing.T) {
	if os.Getenv("ATLANTIS_BENCH_SUMMARY") != "1" {
		t.Skip("set ATLANTIS_BENCH_SUMMARY=1 to run the benchmarks and print their summary")
	}
	srv := redistest.Start(t)
	// The three run interleaved for several rounds and each keeps its fastest
	// round: on two shared cores other work only ever adds time, so the
	// fastest round is the one closest to the backend's own cost.
	const rounds, pairsPerRound = 7, 1000
	benches := pairBenches(t, srv)
	samples := map[string][]time.Duration{}
	for range rounds {
		for _, bench := range benches {
			Ok(t, bench.pair()) // warm up connections and the script cache
			start := time.Now()
			for range pairsPerRound {
				Ok(t, bench.pair())
			}
			samples[bench.name] = append(samples[bench.name], time.Since(start)/pairsPerRound)
		}
	}
	latency := map[string]time.Duration{}
	for name, s := range samples {
		latency[name] = slices.Min(s)
	}
	us := func(d time.Duration) string { return fmt.Sprintf("%.1fus", float64(d)/float64(time.Microsecond)) }
	ratio := func(ref time.Duration) string {
		return fmt.Sprintf("%.2fx", float64(ref)/float64(latency["enhanced-redis"]))
	}
	pairLine := fmt.Sprintf("BENCH pair-latency upstream-boltdb=%s upstream-redis=%s enhanced-redis=%s ratio-vs-boltdb=%s ratio-vs-upstream-redis=%s",
		us(latency["upstream-boltdb"]), us(latency["upstream-redis"]), us(latency["enhanced-redis"]),
		ratio(latency["upstream-boltdb"]), ratio(latency["upstream-redis"]))

	contention := ""
	for _, locks := range []int{1, 100} {
		var grants int64
		res := testing.Benchmark(func(b *testing.B) {
			flush(b, srv.Client(b))
			grants = runContention(b, srv, locks)
		})
		Assert(t, res.N > 0, "contention benchmark with %d locks failed", locks)
		opsPerSec := float64(res.N) / res.T.Seconds()
		contention += fmt.Sprintf(" locks=%d:%.0fops/s(%.0fgrants/s)", locks, opsPerSec, float64(grants)/res.T.Seconds())
	}
	contentionLine := fmt.Sprintf("BENCH contention enhanced-redis clients=%d%s", contentionClients, contention)

	for _, line := range []string{pairLine, contentionLine} {
		t.Log(line)
		fmt.Println(line)
	}
}
