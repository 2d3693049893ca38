package server

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/monitoring"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// scrapeOutEnv names the file TestMonitoringScrapeHelperProcess writes its
// scrape to; it runs only where it is set.
const scrapeOutEnv = "ATLANTIS_TEST_MONITORING_SCRAPE_OUT"

// TestMonitoringNamesAreExported checks that every series the alert rules,
// their unit tests and the Grafana dashboard in monitoring/ use is on the
// server's Prometheus endpoint. A name the server does not export would make
// a panel empty and an alert silent forever, with no error anywhere.
//
// The server runs in a child process: upstream's Prometheus reporter
// registers every series on the process-wide default registry, so a second
// server with Prometheus on in one process (another test's) would panic on
// the duplicate registration.
func TestMonitoringNamesAreExported(t *testing.T) {
	used, err := monitoring.MetricNames()
	Ok(t, err)
	Assert(t, len(used) > 0, "monitoring/ uses no series")

	self, err := os.Executable()
	Ok(t, err)
	out := filepath.Join(t.TempDir(), "metrics.txt")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, self, "-test.run=^TestMonitoringScrapeHelperProcess$", "-test.count=1", "-test.v", "-test.timeout=2m")
	cmd.Env = append(os.Environ(), scrapeOutEnv+"="+out)
	log, err := cmd.CombinedOutput()
	Assert(t, err == nil, "the server's scrape failed (%v):\n%s", err, log)

	exported := scrapedNames(t, out)
	var missing []string
	for _, name := range used {
		if !exported[name] {
			missing = append(missing, name)
		}
	}
	Assert(t, len(missing) == 0, "%d series used in monitoring/ (rules, rule tests, dashboard) are not on the server's /metrics: %s",
		len(missing), strings.Join(missing, ", "))
}

// scrapedNames reads a Prometheus text exposition and returns the names of
// its samples: a summary shows as its name (the quantiles), _sum and _count.
func scrapedNames(t *testing.T, file string) map[string]bool {
	t.Helper()
	f, err := os.Open(file)
	Ok(t, err)
	defer f.Close() // nolint: errcheck
	names := map[string]bool{}
	lines := bufio.NewScanner(f)
	lines.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for lines.Scan() {
		line := lines.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if end := strings.IndexAny(line, "{ "); end > 0 {
			names[line[:end]] = true
		}
	}
	Ok(t, lines.Err())
	return names
}

// TestMonitoringScrapeHelperProcess is the child of
// TestMonitoringNamesAreExported and does nothing on its own. It builds the
// server as `atlantis server` would with Prometheus on in upstream's way (the
// metrics block of the server-side repo config, upstream's default stats
// namespace), on a real Redis with every feature that has series on, starts
// its health checks and reaper, drives lock traffic and a fallback and back,
// and writes the server's /metrics to the file scrapeOutEnv names.
//
// Untagged series exist from the start: upstream's Prometheus reporter is a
// cached reporter, which registers a series, at zero, as soon as the server
// creates its counter, gauge or timer. The traffic is for the tagged ones
// (fallback_events_total{to}) and those set as things happen (the health
// gauges, the lock counters' values).
func TestMonitoringScrapeHelperProcess(t *testing.T) {
	out := os.Getenv(scrapeOutEnv)
	if out == "" {
		return
	}
	redisSrv := redistest.Start(t, redistest.WithAppendOnly())
	userConfig := testUserConfig(t)
	// Upstream's --stats-namespace default: series read atlantis_<scope>_<name>.
	userConfig.StatsNamespace = "atlantis"
	userConfig.RepoConfig = filepath.Join(t.TempDir(), "repos.yaml")
	Ok(t, os.WriteFile(userConfig.RepoConfig, []byte("metrics:\n  prometheus:\n    endpoint: /metrics\n"), 0o600))
	// Every feature with series of its own is on: the queue, deadlock
	// detection, the stale-lock reaper and the fallback. The reaper's first
	// pass is an interval away, so it asks no VCS.
	cfg := queueConfig(redisSrv.Addr)
	cfg.Features.DeadlockDetection = true
	cfg.Features.StaleLockReaper = true
	cfg.Features.StaleLockReaperInterval = time.Hour
	cfg.Fallback.Mode = FallbackBoltDB
	cfg.Redis.DialTimeout = 300 * time.Millisecond
	cfg.Performance.HealthCheckInterval = 100 * time.Millisecond
	srv, serve := startTestServer(t, userConfig, cfg)
	// As Start does, without upstream's listener.
	stop, err := srv.startEnhanced()
	Ok(t, err)
	defer stop()
	waitForActiveBackend(t, serve, "redis")

	// One grant, one refusal (contended), one release.
	project := models.NewProject("org/repo", "monitoring", "")
	holder := models.PullRequest{Num: 7, BaseRepo: models.Repo{FullName: "org/repo"}}
	resp, err := srv.Locker.TryLock(project, "default", holder, models.User{Username: "alice"})
	Ok(t, err)
	Assert(t, resp.LockAcquired, "pull 7 did not get the lock")
	resp, err = srv.Locker.TryLock(project, "default", models.PullRequest{Num: 8, BaseRepo: holder.BaseRepo}, models.User{Username: "bob"})
	Ok(t, err)
	Assert(t, !resp.LockAcquired, "pull 8 got the lock pull 7 holds")
	_, err = srv.Locker.UnlockByPull("org/repo", 7)
	Ok(t, err)

	// A fallback to BoltDB while Redis is gone, and back.
	redisSrv.Stop()
	waitForActiveBackend(t, serve, "legacy-fallback")
	redisSrv.Restart()
	waitForActiveBackend(t, serve, "redis")

	// Counted values reach the reporter at its next flush, once a second.
	var body string
	for start := time.Now(); ; time.Sleep(100 * time.Millisecond) {
		rec := serve("GET", "/metrics")
		Equals(t, 200, rec.Code)
		body = rec.Body.String()
		if strings.Contains(body, "\natlantis_enhanced_locks_acquired_total 1\n") {
			break
		}
		Assert(t, time.Since(start) < 30*time.Second, "the grant was not counted on /metrics:\n%s", enhancedScrapeLines(body))
	}
	t.Logf("enhanced locking's series on /metrics:\n%s", enhancedScrapeLines(body))
	Ok(t, os.WriteFile(out, []byte(body), 0o600))
}

// enhancedLines are the sample lines of enhanced locking's series, sorted.
func enhancedScrapeLines(body string) string {
	var lines []string
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "atlantis_enhanced_") {
			lines = append(lines, line)
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}
