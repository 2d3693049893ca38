package server

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// prometheusRepoConfig turns on upstream's Prometheus endpoint the way a user
// does: the metrics block of the server-side repo config.
const prometheusRepoConfig = `repos:
- id: /.*/
metrics:
  prometheus:
    endpoint: /metrics
`

// useFreshPrometheusRegistry gives upstream's Prometheus reporter, which
// registers on the client library's default registry, a registry of this
// test's own, so a second server in the process (-count=2) does not find
// every series registered already.
func useFreshPrometheusRegistry(t *testing.T) {
	registry := prometheus.NewRegistry()
	registerer, gatherer := prometheus.DefaultRegisterer, prometheus.DefaultGatherer
	prometheus.DefaultRegisterer, prometheus.DefaultGatherer = registry, registry
	t.Cleanup(func() { prometheus.DefaultRegisterer, prometheus.DefaultGatherer = registerer, gatherer })
}

// trustSim makes upstream's GitHub client, which sends through
// http.DefaultTransport, trust the GitHub stand-in's CA until the test ends.
func trustSim(t *testing.T, sim *vcssim.Sim) {
	transport := http.DefaultTransport
	http.DefaultTransport = sim.Transport()
	t.Cleanup(func() { http.DefaultTransport = transport })
}

// scraped is one scrape of /metrics: each sample by its name and labels as
// Prometheus prints them (name{label="value"}), a summary by its _count and
// _sum, and each family's type.
type scraped struct {
	samples map[string]float64
	types   map[string]dto.MetricType
}

func scrapeMetrics(t *testing.T, url string) scraped {
	t.Helper()
	resp, err := http.Get(url)
	Ok(t, err)
	defer resp.Body.Close() // nolint: errcheck
	Equals(t, http.StatusOK, resp.StatusCode)
	var parser expfmt.TextParser
	families, err := parser.TextToMetricFamilies(resp.Body)
	Ok(t, err)
	s := scraped{samples: map[string]float64{}, types: map[string]dto.MetricType{}}
	for name, f := range families {
		s.types[name] = f.GetType()
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			key := name
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				s.samples[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				s.samples[key] = m.GetGauge().GetValue()
			case dto.MetricType_SUMMARY:
				s.samples[key+"_count"] = float64(m.GetSummary().GetSampleCount())
				s.samples[key+"_sum"] = m.GetSummary().GetSampleSum()
			}
		}
	}
	return s
}

// mismatches lists the samples of want that s does not show.
func (s scraped) mismatches(want map[string]float64) []string {
	var out []string
	for key, v := range want {
		got, ok := s.samples[key]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("%s missing (want %v)", key, v))
		case got != v:
			out = append(out, fmt.Sprintf("%s = %v, want %v", key, got, v))
		}
	}
	sort.Strings(out)
	return out
}

// scrapeUntil scrapes until every sample of want shows, and returns that
// scrape. Upstream's scope hands its counters to Prometheus once a second and
// the sampler reads the backend every health-check interval, so a scrape
// right after the traffic may be a moment behind.
func scrapeUntil(t *testing.T, url string, want map[string]float64) scraped {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s := scrapeMetrics(t, url)
		missing := s.mismatches(want)
		if len(missing) == 0 {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30s /metrics still shows:\n  %s", strings.Join(missing, "\n  "))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

const enhancedPrefix = "atlantis_enhanced_"

// withPrefix puts the enhanced namespace in front of every key.
func withPrefix(m map[string]float64) map[string]float64 {
	out := make(map[string]float64, len(m))
	for k, v := range m {
		out[enhancedPrefix+k] = v
	}
	return out
}

// merged is a copy of base with over's samples put over it.
func merged(base, over map[string]float64) map[string]float64 {
	out := make(map[string]float64, len(base)+len(over))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range over {
		out[k] = v
	}
	return out
}

// TestMetrics_Scrape starts the server with upstream's Prometheus endpoint on,
// on a real Redis with the queue and the BoltDB fallback, and the GitHub
// stand-in for the queue's comments. It drives locks, contention, a queued
// pull handed its lock by the queue worker, and a fallback while Redis is
// stopped, scraping /metrics over HTTP after each step: every enhanced series
// shows the value the traffic made.
func TestMetrics_Scrape(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Redis, the GitHub stand-in and git")
	}
	useFreshPrometheusRegistry(t)
	sim, err := vcssim.New(vcssim.Options{Logf: t.Logf})
	Ok(t, err)
	t.Cleanup(func() { _ = sim.Close() })
	trustSim(t, sim)
	repo, err := sim.CreateRepo("org", "repo", map[string]string{"network/main.tf": "", "app/main.tf": "", "db/main.tf": ""})
	Ok(t, err)
	for pull, author := range map[int]string{7: "alice", 8: "bob", 9: "carol", 10: "dave"} {
		_, err := sim.OpenPullRequest(repo, pull, fmt.Sprintf("change-%d", pull), map[string]string{"network/main.tf": "# " + author}, author)
		Ok(t, err)
	}

	redisSrv := redistest.Start(t, redistest.WithAppendOnly())
	userConfig := testUserConfig(t)
	userConfig.StatsNamespace = "atlantis"
	userConfig.GithubHostname, userConfig.GithubUser, userConfig.GithubToken = sim.Host(), sim.User(), sim.Token()
	userConfig.RepoConfig = filepath.Join(t.TempDir(), "repos.yaml")
	Ok(t, os.WriteFile(userConfig.RepoConfig, []byte(prometheusRepoConfig), 0o600))
	cfg := queueConfig(redisSrv.Addr)
	cfg.Fallback.Mode = FallbackBoltDB
	cfg.Performance.HealthCheckInterval = 200 * time.Millisecond
	srv, _ := startTestServer(t, userConfig, cfg)
	stop, err := srv.startEnhanced()
	Ok(t, err)
	t.Cleanup(stop)
	web := httptest.NewServer(upstreamHandler(srv))
	t.Cleanup(web.Close)
	metricsURL := web.URL + "/metrics"

	lock := func(dir string, pull int) models.ProjectLock {
		l := fixtureLock(dir, pull, "user")
		l.Pull.BaseRepo = models.Repo{FullName: "org/repo", Owner: "org", Name: "repo", VCSHost: models.VCSHost{Hostname: sim.Host(), Type: models.Github}}
		return l
	}
	tryLock := func(l models.ProjectLock) bool {
		t.Helper()
		resp, err := srv.Locker.TryLock(l.Project, l.Workspace, l.Pull, l.User)
		Ok(t, err)
		return resp.LockAcquired
	}

	// Before any traffic every series is there, at zero, and Redis healthy.
	zero := withPrefix(map[string]float64{
		"locks_acquired_total":                    0,
		"locks_contended_total":                   0,
		"lock_errors_total":                       0,
		"lock_requests_queued_total":              0,
		"locks_released_total":                    0,
		"lock_queue_transfers_total":              0,
		"lock_queue_wait_seconds_count":           0,
		"lock_queue_expiries_total":               0,
		"lock_queue_replans_started_total":        0,
		"lock_queue_replans_failed_total":         0,
		"lock_conflicts_total":                    0,
		"mirror_failures_total":                   0,
		"locks_reaped_total":                      0,
		"deadlocks_detected_total":                0,
		`fallback_events_total{to="legacy"}`:      0,
		`fallback_events_total{to="redis"}`:       0,
		"lock_acquisition_duration_seconds_count": 0,
		`event_drops_total{subscriber="metrics"}`: 0,
		`event_drops_total{subscriber="log"}`:     0,
		"non_enhanced_lock_writes_total":          0,
		"command_lease_waits_total":               0,
		"command_lease_lost_total":                0,
		"command_lease_refused_total":             0,
		"command_lease_wait_seconds_count":        0,
		"redis_pool_timeouts_total":               0,
		"backend_health_status":                   1,
		"fallback_active":                         0,
		"lock_queue_depth":                        0,
	})
	first := scrapeUntil(t, metricsURL, zero)
	for name, typ := range map[string]dto.MetricType{
		"lock_acquisition_duration_seconds": dto.MetricType_SUMMARY,
		"lock_queue_wait_seconds":           dto.MetricType_SUMMARY,
		"locks_acquired_total":              dto.MetricType_COUNTER,
		"fallback_events_total":             dto.MetricType_COUNTER,
		"event_drops_total":                 dto.MetricType_COUNTER,
		"lock_queue_depth":                  dto.MetricType_GAUGE,
		"backend_health_status":             dto.MetricType_GAUGE,
		"redis_connections_active":          dto.MetricType_GAUGE,
	} {
		Equals(t, typ, first.types[enhancedPrefix+name])
	}

	// Pull 7 holds network and app. Pull 8, planning, is refused network and
	// queued; pull 9, not planning, is refused app and not queued.
	Assert(t, tryLock(lock("network", 7)), "pull 7 did not lock network")
	Assert(t, tryLock(lock("app", 7)), "pull 7 did not lock app")
	planning := srv.queue.policy.Track(lock("network", 8).Pull.BaseRepo, 8, true)
	Assert(t, !tryLock(lock("network", 8)), "pull 8 was granted pull 7's lock")
	planning() // pull 8 is told its place
	Assert(t, !tryLock(lock("app", 9)), "pull 9 was granted pull 7's lock")
	traffic := merged(zero, withPrefix(map[string]float64{
		"locks_acquired_total":                    2,
		"locks_contended_total":                   2,
		"lock_requests_queued_total":              1,
		"lock_acquisition_duration_seconds_count": 4,
		"lock_queue_depth":                        1,
	}))
	scrapeUntil(t, metricsURL, traffic)

	// Pull 7 is merged: both its locks go, network to pull 8, and the
	// worker tells pull 8 so.
	released, err := srv.Locker.UnlockByPull("org/repo", 7)
	Ok(t, err)
	Equals(t, 2, len(released))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = sim.WaitForComment(ctx, "org/repo", 8, func(c vcssim.Comment) bool { return strings.HasPrefix(c.Body, "**Lock handed over**") })
	Ok(t, err)
	holder, err := srv.Adapter.GetLock(lock("network", 8).Project, "default")
	Ok(t, err)
	Assert(t, holder != nil && holder.Pull.Num == 8, "network was not handed to pull 8: %v", holder)
	traffic = merged(traffic, withPrefix(map[string]float64{
		"locks_released_total":          2,
		"lock_queue_transfers_total":    1,
		"lock_queue_wait_seconds_count": 1,
		"lock_queue_depth":              0,
	}))
	scrapeUntil(t, metricsURL, traffic)

	// Redis stops: pull 10's lock is served by the BoltDB fallback.
	redisSrv.Stop()
	Assert(t, tryLock(lock("db", 10)), "the fallback did not grant a free lock")
	traffic = merged(traffic, withPrefix(map[string]float64{
		"locks_acquired_total":                    3,
		"lock_acquisition_duration_seconds_count": 5,
		`fallback_events_total{to="legacy"}`:      1,
		"fallback_active":                         1,
		"backend_health_status":                   0,
	}))
	scrapeUntil(t, metricsURL, traffic)

	// Redis returns: the health check sees it, the fallback's lock is copied
	// into it, and locks go to Redis again.
	redisSrv.Restart()
	traffic = merged(traffic, withPrefix(map[string]float64{
		`fallback_events_total{to="redis"}`: 1,
		"fallback_active":                   0,
		"backend_health_status":             1,
	}))
	last := scrapeUntil(t, metricsURL, traffic)
	Equals(t, "redis", srv.Adapter.ActiveBackend())
	holder, err = srv.Adapter.GetLock(lock("db", 10).Project, "default")
	Ok(t, err)
	Assert(t, holder != nil && holder.Pull.Num == 10, "the fallback's lock is not in Redis: %v", holder)

	// The pool gauges split the client's connections into busy and idle.
	Assert(t, last.samples[enhancedPrefix+"lock_acquisition_duration_seconds_sum"] > 0, "acquisition times not recorded")
	Assert(t, last.samples[enhancedPrefix+"redis_ping_latency_count"] > 0, "health-check pings not timed")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		s := scrapeMetrics(t, metricsURL)
		conns := s.samples[enhancedPrefix+"redis_connections_active"] + s.samples[enhancedPrefix+"redis_connections_idle"]
		total := float64(srv.backend.client.PoolStats().TotalConns)
		if conns == total && total > 0 {
			break
		}
		Assert(t, time.Now().Before(deadline), "/metrics shows %v connections active or idle, the client has %v", conns, total)
	}
	t.Logf("scrape of the enhanced series at the end:\n%s", enhancedLines(t, metricsURL))
}

// enhancedLines is the enhanced part of /metrics as Prometheus prints it.
func enhancedLines(t *testing.T, url string) string {
	resp, err := http.Get(url)
	Ok(t, err)
	defer resp.Body.Close() // nolint: errcheck
	var b strings.Builder
	families, err := new(expfmt.TextParser).TextToMetricFamilies(resp.Body)
	Ok(t, err)
	var names []string
	for name := range families {
		if strings.HasPrefix(name, enhancedPrefix) {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		_, err := expfmt.MetricFamilyToText(&b, families[name])
		Ok(t, err)
	}
	return b.String()
}
