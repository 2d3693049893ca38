package server

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// BenchmarkHealthzWhileAWaitIsPending measures /healthz while a request waits
// for a lock, the fallback is on and the health checker reports every few
// milliseconds: the probe must answer at once whatever locking does. It
// reports the p50 and p99 answer times.
func BenchmarkHealthzWhileAWaitIsPending(b *testing.B) {
	redisSrv := redistest.Start(b)
	cfg := redisConfig(redisSrv.Addr)
	cfg.Fallback.Mode = FallbackBoltDB
	cfg.Features.WaitTimeout = time.Hour
	cfg.Performance.HealthCheckInterval = 5 * time.Millisecond
	userConfig := testUserConfig(b)
	userConfig.LogLevel = "error" // the benchmark's lines stay readable
	srv, err := NewServer(userConfig, testConfig(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		srv.closeEnhanced()                  // nolint: errcheck
		srv.LocksController.Database.Close() // nolint: errcheck
	})
	srv.registerRoutes()
	srv.SetupRoutes()
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	srv.watchBackend(ctx)

	project := models.NewProject("org/repo", "dir", "")
	if _, err := srv.Locker.TryLock(project, "default", models.PullRequest{Num: 1}, models.User{Username: "alice"}); err != nil {
		b.Fatal(err)
	}
	go srv.Locker.TryLock(project, "default", models.PullRequest{Num: 2}, models.User{Username: "bob"}) // nolint: errcheck
	enhancedtest.AwaitQueue(b, srv.backend.Backend, enhancedtest.NewLock("org/repo", "dir", "default", "", 1), 1)

	answers := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		rec := httptest.NewRecorder()
		srv.Router.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
		answers = append(answers, time.Since(start))
		if rec.Code != http.StatusOK {
			b.Fatalf("/healthz answered %d", rec.Code)
		}
	}
	b.StopTimer()
	slices.Sort(answers)
	b.ReportMetric(float64(answers[len(answers)/2].Microseconds()), "p50-us")
	b.ReportMetric(float64(answers[len(answers)*99/100].Microseconds()), "p99-us")
}
