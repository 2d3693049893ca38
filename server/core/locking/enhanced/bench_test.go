package enhanced_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/core/db"
	upstreamredis "github.com/runatlantis/atlantis/server/core/redis"
	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// The benchmark measures what an Atlantis user pays: every figure is taken
// through upstream's db.Database, the interface every upstream component
// locks through, for enhanced locking as the server installs it and for
// upstream's own databases. The two sides of a comparison run interleaved,
// round by round, and a ratio is the median of the per-round ratios
// (upstream's time over enhanced's: above 1, enhanced is faster), so the
// drift of a shared machine cancels out. It measures and asserts nothing.
//
// Configurations:
//   - fleet: upstream's Redis database (--locking-db-type=redis) on the Redis
//     enhanced locking uses, on the same keys; against upstream's Redis
//     database alone on a Redis of its own.
//   - boltdb: upstream's default BoltDB as the legacy database beside
//     enhanced locking on Redis; against upstream's BoltDB alone.
//   - mixed (List and UnlockByPull): the fleet, where half of the locks were
//     written by upstream replicas and indexed by the background scan.

const (
	benchRounds = 15
	// blocksPerRound alternate the two sides within a round, so a burst of
	// load on the shared machine falls on both.
	blocksPerRound  = 10
	pairsPerBlock   = 20
	benchLocks      = 2000
	benchPulls      = 200
	listsPerBlock   = 1
	contentionProcs = 8
	contentionTime  = 2 * time.Second
	memoryLocks     = 1000
)

// benchSide is one side of a comparison: a database and how to set it up.
type benchSide struct {
	name string
	db   db.Database
}

type benchConfig struct {
	name     string
	upstream benchSide
	enhanced benchSide
	// enhancedRedis is the Redis enhanced locking runs on, for the scan of
	// the mixed configuration.
	enhancedRedis *backends.Redis
}

// benchAdapter is enhanced locking on client as the server installs it, with
// legacy as the legacy database: upstream's Redis database on the same keys
// (shared), or a database of its own that gets a copy of every lock.
func benchAdapter(t *testing.T, client redis.UniversalClient, legacy db.Database, shared bool) (*enhanced.Adapter, *backends.Redis) {
	t.Helper()
	backend, err := backends.NewRedis(client, backends.RedisOptions{Logger: logging.NewNoopLogger(t), NoReleaseTimes: shared})
	Ok(t, err)
	t.Cleanup(func() { backend.Close() }) // nolint: errcheck
	opts := enhanced.AdapterOptions{BackendName: "redis", SeparateLegacyLocks: !shared, Logger: logging.NewNoopLogger(t)}
	return newAdapter(t, guard(t, legacy), backend, opts), backend
}

func upstreamRedisOn(t *testing.T, srv *redistest.Server) db.Database {
	t.Helper()
	database, err := upstreamredis.NewWithClient(srv.Client(t), "", "")
	Ok(t, err)
	return database
}

func benchConfigs(t *testing.T) []benchConfig {
	upstreamSrv := redistest.Start(t)
	fleetSrv := redistest.Start(t)
	boltSrv := redistest.Start(t)
	fleet, fleetRedis := benchAdapter(t, fleetSrv.Client(t), upstreamRedisOn(t, fleetSrv), true)
	bolt, _ := benchAdapter(t, boltSrv.Client(t), openBolt(t, t.TempDir()), false)
	return []benchConfig{
		{name: "fleet", upstream: benchSide{"upstream-redis", upstreamRedisOn(t, upstreamSrv)}, enhanced: benchSide{"enhanced", fleet}, enhancedRedis: fleetRedis},
		{name: "boltdb", upstream: benchSide{"upstream-boltdb", openBolt(t, t.TempDir())}, enhanced: benchSide{"enhanced", bolt}},
	}
}

// interleave measures both sides for benchRounds rounds of blocksPerRound
// blocks each, alternating sides block by block and which side starts. Each
// call of a side's function is one block and returns its time per
// operation. It returns each side's median per-round time and the median of
// the per-round ratios.
func interleave(t *testing.T, upstream, enhanced func() time.Duration) (time.Duration, time.Duration, float64) {
	t.Helper()
	var ups, enhs []time.Duration
	var ratios []float64
	for round := range benchRounds {
		var u, e time.Duration
		for block := range blocksPerRound {
			if (round+block)%2 == 0 {
				u, e = u+upstream(), e+enhanced()
			} else {
				e, u = e+enhanced(), u+upstream()
			}
		}
		u, e = u/blocksPerRound, e/blocksPerRound
		ups, enhs = append(ups, u), append(enhs, e)
		ratios = append(ratios, float64(u)/float64(e))
	}
	return median(ups), median(enhs), median(ratios)
}

func median[T int64 | float64 | time.Duration](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func us(d time.Duration) string { return fmt.Sprintf("%.1fus", float64(d)/float64(time.Microsecond)) }

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond)) }

func benchLine(t *testing.T, format string, args ...any) {
	line := fmt.Sprintf("BENCH "+format, args...)
	t.Log(line)
	fmt.Println(line)
}

// pairs times n acquisitions of a free lock, each followed by its Unlock.
func pairs(t *testing.T, database db.Database, lock models.ProjectLock, n int) time.Duration {
	start := time.Now()
	for range n {
		acquired, _, err := database.TryLock(lock)
		Ok(t, err)
		Assert(t, acquired, "free lock not acquired")
		_, err = database.Unlock(lock.Project, lock.Workspace)
		Ok(t, err)
	}
	return time.Since(start) / time.Duration(n)
}

// holdLocks takes benchLocks locks held by benchPulls pulls.
func holdLocks(t *testing.T, database db.Database, repo string, from, to int) {
	for i := from; i < to; i++ {
		acquired, _, err := database.TryLock(enhancedtest.NewLock(repo, fmt.Sprintf("dir%04d", i), "default", "", 1+i%benchPulls))
		Ok(t, err)
		Assert(t, acquired, "lock %d not acquired", i)
	}
}

// unlockByPull times releasing the locks of one pull, then takes them again.
func unlockByPull(t *testing.T, database db.Database, repo string, round int) time.Duration {
	pull := 1 + round%benchPulls
	start := time.Now()
	released, err := database.UnlockByPull(repo, pull)
	elapsed := time.Since(start)
	Ok(t, err)
	Equals(t, benchLocks/benchPulls, len(released))
	for _, l := range released {
		acquired, _, err := database.TryLock(l)
		Ok(t, err)
		Assert(t, acquired, "lock not taken again")
	}
	return elapsed
}

func lists(t *testing.T, database db.Database, n int) time.Duration {
	start := time.Now()
	for range n {
		locks, err := database.List()
		Ok(t, err)
		Equals(t, benchLocks, len(locks))
	}
	return time.Since(start) / time.Duration(n)
}

// TestBenchSummary prints one BENCH line per measurement (see the comment at
// the top of this file). It runs only with ATLANTIS_BENCH_SUMMARY=1.
func TestBenchSummary(t *testing.T) {
	if os.Getenv("ATLANTIS_BENCH_SUMMARY") != "1" {
		t.Skip("set ATLANTIS_BENCH_SUMMARY=1 to run the benchmarks and print their summary")
	}
	configs := benchConfigs(t)
	for _, c := range configs {
		lock := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
		pairs(t, c.upstream.db, lock, 10) // warm up connections and scripts
		pairs(t, c.enhanced.db, lock, 10)
		u, e, r := interleave(t,
			func() time.Duration { return pairs(t, c.upstream.db, lock, pairsPerBlock) },
			func() time.Duration { return pairs(t, c.enhanced.db, lock, pairsPerBlock) })
		benchLine(t, "db-pair %s %s=%s enhanced=%s ratio=%.2fx", c.name, c.upstream.name, us(u), us(e), r)
	}
	for _, c := range configs {
		holdLocks(t, c.upstream.db, "org/repo", 0, benchLocks)
		holdLocks(t, c.enhanced.db, "org/repo", 0, benchLocks)
	}
	// The fleet against upstream's Redis database; the BoltDB configuration
	// against both of upstream's databases.
	fleet, bolt := configs[0], configs[1]
	for _, cmp := range []struct {
		config   string
		upstream benchSide
		enhanced db.Database
	}{
		{"fleet", fleet.upstream, fleet.enhanced.db},
		{"boltdb", fleet.upstream, bolt.enhanced.db},
		{"boltdb", bolt.upstream, bolt.enhanced.db},
	} {
		u, e, r := interleave(t,
			func() time.Duration { return lists(t, cmp.upstream.db, listsPerBlock) },
			func() time.Duration { return lists(t, cmp.enhanced, listsPerBlock) })
		benchLine(t, "db-list %s locks=%d pulls=%d %s=%s enhanced=%s ratio=%.2fx", cmp.config, benchLocks, benchPulls, cmp.upstream.name, ms(u), ms(e), r)
		round := 0
		u, e, r = interleave(t,
			func() time.Duration { return unlockByPull(t, cmp.upstream.db, "org/repo", round) },
			func() time.Duration { round++; return unlockByPull(t, cmp.enhanced, "org/repo", round) })
		benchLine(t, "db-unlock-by-pull %s locks=%d %s=%s enhanced=%s ratio=%.2fx", cmp.config, benchLocks, cmp.upstream.name, ms(u), ms(e), r)
	}
	benchMixedFleet(t, configs[0])
	benchServerTime(t)
	benchMemory(t)
	benchContention(t)
	benchQueue(t)
}

// benchMixedFleet lists and releases by pull in a fleet where half of the
// locks were written by an upstream replica, which keeps no index; the
// background scan has indexed them.
func benchMixedFleet(t *testing.T, fleet benchConfig) {
	srv := redistest.Start(t)
	adapter, backend := benchAdapter(t, srv.Client(t), upstreamRedisOn(t, srv), true)
	upstreamReplica := upstreamRedisOn(t, srv)
	holdLocks(t, adapter, "org/repo", 0, benchLocks/2)
	holdLocks(t, upstreamReplica, "org/repo", benchLocks/2, benchLocks)
	_, err := backend.ScanForUnindexedLocks(context.Background())
	Ok(t, err)
	u, e, r := interleave(t,
		func() time.Duration { return lists(t, fleet.upstream.db, listsPerBlock) },
		func() time.Duration { return lists(t, adapter, listsPerBlock) })
	benchLine(t, "db-list mixed locks=%d upstream-written=%d upstream-redis=%s enhanced=%s ratio=%.2fx", benchLocks, benchLocks/2, ms(u), ms(e), r)
	round := 0
	u, e, r = interleave(t,
		func() time.Duration { return unlockByPull(t, fleet.upstream.db, "org/repo", round) },
		func() time.Duration { round++; return unlockByPull(t, adapter, "org/repo", round) })
	benchLine(t, "db-unlock-by-pull mixed locks=%d upstream-redis=%s enhanced=%s ratio=%.2fx", benchLocks, ms(u), ms(e), r)
}

// benchServerTime is the Redis server time of a pair in the fleet
// configuration, from INFO commandstats: the usec of every command the client
// sent, where an EVALSHA's usec already includes the commands its script
// ran. The client's commands are counted by a hook; their usec_per_call
// averages a command's calls inside scripts and outside, which cost alike.
func benchServerTime(t *testing.T) {
	const n = 500
	// side sets up one database on a Redis of its own and measures n pairs.
	side := func(setup func(client *redis.Client) db.Database) func() float64 {
		srv := redistest.Start(t)
		client := srv.Client(t)
		database := setup(client)
		lock := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
		pairs(t, database, lock, 10)
		sent := &redistest.RoundTrips{}
		client.AddHook(sent)
		return func() float64 {
			redistest.ResetStats(t, client)
			sent.Take()
			pairs(t, database, lock, n)
			stats := commandUsec(t, client)
			var total float64
			for cmd, calls := range redistest.Counts(sent.Take()) {
				total += float64(calls) * stats[cmd]
			}
			return total / n
		}
	}
	upstream := side(func(c *redis.Client) db.Database {
		database, err := upstreamredis.NewWithClient(c, "", "")
		Ok(t, err)
		return database
	})
	ours := side(func(c *redis.Client) db.Database {
		legacy, err := upstreamredis.NewWithClient(c, "", "")
		Ok(t, err)
		adapter, _ := benchAdapter(t, c, legacy, true)
		return adapter
	})
	var ups, enhs []float64
	for range benchRounds {
		ups, enhs = append(ups, upstream()), append(enhs, ours())
	}
	benchLine(t, "redis-us-per-pair fleet upstream-redis=%.1fus enhanced=%.1fus (median of %d rounds of %d pairs)", median(ups), median(enhs), benchRounds, n)
}

// commandUsec reads usec_per_call per command from INFO commandstats.
func commandUsec(t *testing.T, client *redis.Client) map[string]float64 {
	info, err := client.Info(context.Background(), "commandstats").Result()
	Ok(t, err)
	out := map[string]float64{}
	for _, line := range strings.Split(info, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_")
		if !ok {
			continue
		}
		name, fields, _ := strings.Cut(rest, ":")
		for _, f := range strings.Split(fields, ",") {
			if v, ok := strings.CutPrefix(f, "usec_per_call="); ok {
				out[name], _ = strconv.ParseFloat(v, 64)
			}
		}
	}
	return out
}

// benchMemory is the Redis memory a held lock costs: MEMORY USAGE of every
// key, before and after memoryLocks locks of memoryLocks/10 pulls are taken,
// divided by memoryLocks; for upstream that is its one key per lock.
func benchMemory(t *testing.T) {
	measure := func(setup func(srv *redistest.Server) db.Database) float64 {
		srv := redistest.Start(t)
		client := srv.Client(t)
		database := setup(srv)
		before := usedByKeys(t, client)
		for i := range memoryLocks {
			acquired, _, err := database.TryLock(enhancedtest.NewLock("org/repo", fmt.Sprintf("dir%04d", i), "default", "", 1+i%(memoryLocks/10)))
			Ok(t, err)
			Assert(t, acquired, "lock not acquired")
		}
		return float64(usedByKeys(t, client)-before) / memoryLocks
	}
	upstream := measure(func(srv *redistest.Server) db.Database { return upstreamRedisOn(t, srv) })
	ours := measure(func(srv *redistest.Server) db.Database {
		adapter, _ := benchAdapter(t, srv.Client(t), upstreamRedisOn(t, srv), true)
		return adapter
	})
	benchLine(t, "memory-per-lock fleet locks=%d upstream-redis=%.0fB enhanced=%.0fB ratio=%.2fx", memoryLocks, upstream, ours, ours/upstream)
}

func usedByKeys(t *testing.T, client *redis.Client) int64 {
	ctx := context.Background()
	var total int64
	iter := client.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		n, err := client.MemoryUsage(ctx, iter.Val(), 0).Result()
		Ok(t, err)
		total += n
	}
	Ok(t, iter.Err())
	return total
}

// contentionResult is what one worker process reports.
type contentionResult struct {
	Attempts  int64           `json:"attempts"`
	Grants    int64           `json:"grants"`
	Latencies []time.Duration `json:"latencies"`
}

// benchContention runs contentionProcs processes, each a replica with its
// own connections, that take and release locks as fast as they can for
// contentionTime: all on one lock, then spread over 100. A grant is a
// TryLock that acquired; its latency is the TryLock's.
func benchContention(t *testing.T) {
	for _, side := range []string{"upstream-redis", "enhanced"} {
		line := fmt.Sprintf("contention %s procs=%d", side, contentionProcs)
		for _, locks := range []int{1, 100} {
			srv := redistest.Start(t)
			results := make([]contentionResult, contentionProcs)
			var wg sync.WaitGroup
			for i := range contentionProcs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					cmd := exec.Command(os.Args[0], "-test.run=^TestContentionWorker$", "-test.count=1") // nolint: gosec
					cmd.Env = append(os.Environ(),
						"ATLANTIS_BENCH_WORKER=1",
						"ATLANTIS_BENCH_REDIS="+srv.Addr,
						"ATLANTIS_BENCH_SIDE="+side,
						fmt.Sprintf("ATLANTIS_BENCH_LOCKS=%d", locks),
						fmt.Sprintf("ATLANTIS_BENCH_PULL=%d", i+1),
						"ATLANTIS_BENCH_DURATION="+contentionTime.String())
					out, err := cmd.Output()
					Ok(t, err)
					for _, l := range strings.Split(string(out), "\n") {
						if rest, ok := strings.CutPrefix(l, "WORKER "); ok {
							Ok(t, json.Unmarshal([]byte(rest), &results[i]))
						}
					}
				}()
			}
			wg.Wait()
			var grants int64
			var latencies []time.Duration
			for _, r := range results {
				grants += r.Grants
				latencies = append(latencies, r.Latencies...)
			}
			slices.Sort(latencies)
			p99 := time.Duration(0)
			if len(latencies) > 0 {
				p99 = latencies[len(latencies)*99/100]
			}
			line += fmt.Sprintf(" locks=%d:grants/s=%.0f,p99=%s", locks, float64(grants)/contentionTime.Seconds(), us(p99))
		}
		benchLine(t, "%s", line)
	}
}

// TestContentionWorker is one process of benchContention; it runs only when
// started by it.
func TestContentionWorker(t *testing.T) {
	if os.Getenv("ATLANTIS_BENCH_WORKER") != "1" {
		t.Skip("started by TestBenchSummary")
	}
	client := redis.NewClient(&redis.Options{Addr: os.Getenv("ATLANTIS_BENCH_REDIS")})
	defer client.Close() // nolint: errcheck
	locks, _ := strconv.Atoi(os.Getenv("ATLANTIS_BENCH_LOCKS"))
	pull, _ := strconv.Atoi(os.Getenv("ATLANTIS_BENCH_PULL"))
	duration, _ := time.ParseDuration(os.Getenv("ATLANTIS_BENCH_DURATION"))
	var database db.Database
	if os.Getenv("ATLANTIS_BENCH_SIDE") == "upstream-redis" {
		database, _ = upstreamredis.NewWithClient(client, "", "")
	} else {
		legacy, _ := upstreamredis.NewWithClient(client, "", "")
		database, _ = benchAdapter(t, client, legacy, true)
	}
	var r contentionResult
	deadline := time.Now().Add(duration)
	for i := 0; time.Now().Before(deadline); i++ {
		lock := enhancedtest.NewLock("org/repo", fmt.Sprintf("dir%d", i%locks), "default", "", pull)
		start := time.Now()
		acquired, _, err := database.TryLock(lock)
		elapsed := time.Since(start)
		Ok(t, err)
		r.Attempts++
		if !acquired {
			continue
		}
		r.Grants++
		r.Latencies = append(r.Latencies, elapsed)
		_, err = database.UnlockIfOwnedByPull(lock.Project, lock.Workspace, pull)
		Ok(t, err)
	}
	out, err := json.Marshal(r)
	Ok(t, err)
	fmt.Printf("WORKER %s\n", out)
}
