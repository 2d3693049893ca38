// Package chaos is `make chaos`: real atlantis replicas on real Redis (a
// standalone server, a sentinel set, a cluster with replicas) under traffic
// from two pull requests per project, plans, applies, unlocks and merges
// sent as signed webhooks to every replica, while a fault is injected by
// signalling a process this suite started, by its pid:
//
//   - redis-killed-aof-always, redis-killed-aof-everysec: Redis SIGKILLed
//     with a queue waiting, and restarted from its append-only file;
//   - replica-frozen: a replica SIGSTOPped past its command lease while
//     another runs the pull's command; it lives in the e2e suite beside the
//     fence it proves (e2e/frozen_replica_test.go), and `make chaos` runs it
//     too;
//   - replica-killed-mid-plan, replica-killed-mid-handover: a replica
//     SIGKILLed while it plans, and while it announces a hand-over;
//   - redis-unreachable, redis-unreachable-boltdb-fallback: Redis SIGSTOPped
//     for 30 s under traffic, failing closed, and with the BoltDB fallback
//     on a single replica;
//   - sentinel-failover, cluster-failover: the master holding a lock and its
//     queue SIGKILLed, a replica promoted.
//
// Each scenario checks the history it recorded (history_test.go) and prints
// `CHAOS <scenario> operations=N double-grants=0 lost=0 overlaps=0`, failing
// otherwise. replication_test.go measures what a failover loses of the
// writes a master acknowledged, with and without WAIT.
//
// `go test -short` skips the suite; otherwise a missing terraform or
// redis-server is a failure, never a skip.
package chaos

import (
	"context"
	"os"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/atlantis-enhanced/atlantis/e2e/e2ekit"
)

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

// bins are the binaries TestMain built or found.
var bins e2ekit.Binaries

func TestMain(m *testing.M) {
	// The suite's own clients fail on purpose while Redis is down; their
	// errors are in the history, not in go-redis's log.
	redis.SetLogger(quietLogger{})
	os.Exit(e2ekit.Main(m, "chaos", func(b e2ekit.Binaries) { bins = b }))
}
