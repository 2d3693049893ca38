package backends

import (
	"context"
	"path/filepath"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/core/boltdb"
	upstreamredis "github.com/runatlantis/atlantis/server/core/redis"
	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/legacydb"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

func TestConformanceRedisStandalone(t *testing.T) {
	client := redistest.Start(t).Client(t)
	for _, prefix := range []string{"", "team1:"} {
		t.Run("prefix="+prefix, func(t *testing.T) {
			enhancedtest.RunConformance(t, func(t *testing.T) enhanced.Backend {
				return newTestRedis(t, client, RedisOptions{KeyPrefix: prefix})
			}, enhancedtest.Enhanced)
		})
	}
}

func TestConformanceRedisCluster(t *testing.T) {
	client := redistest.StartCluster(t).Client(t)
	// "{atlantis}:" puts every key in one slot; the others spread keys over
	// the three masters.
	for _, prefix := range []string{"", "team1:", "{atlantis}:"} {
		t.Run("prefix="+prefix, func(t *testing.T) {
			enhancedtest.RunConformance(t, func(t *testing.T) enhanced.Backend {
				return newTestRedis(t, client, RedisOptions{KeyPrefix: prefix})
			}, enhancedtest.Enhanced)
		})
	}
}

func TestConformanceRedisSentinel(t *testing.T) {
	client := redistest.StartSentinel(t).Client(t)
	enhancedtest.RunConformance(t, func(t *testing.T) enhanced.Backend {
		return newTestRedis(t, client, RedisOptions{})
	}, enhancedtest.Enhanced)
}

func TestConformanceBoltDB(t *testing.T) {
	enhancedtest.RunConformance(t, func(t *testing.T) enhanced.Backend {
		b := NewBoltDB(guardedBoltDB(t), nil)
		t.Cleanup(func() { _ = b.Close() })
		return b
	}, enhancedtest.Enhanced)
}

// Upstream's own databases, as references for the suite.

func TestConformanceUpstreamBoltDB(t *testing.T) {
	enhancedtest.RunConformance(t, func(t *testing.T) enhanced.Backend {
		return enhancedtest.LegacyBackend(newUpstreamBoltDB(t))
	}, enhancedtest.Upstream)
}

func TestConformanceUpstreamRedis(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client(t)
	enhancedtest.RunConformance(t, func(t *testing.T) enhanced.Backend {
		flush(t, admin)
		return enhancedtest.LegacyBackend(newUpstreamRedis(t, srv.Client(t)))
	}, enhancedtest.Upstream)
}

// newTestRedis empties the Redis behind client and returns a backend on it.
func newTestRedis(t testing.TB, client redis.UniversalClient, opts RedisOptions) *Redis {
	t.Helper()
	flush(t, client)
	return openRedis(t, client, opts)
}

// openRedis returns another replica's backend on client, closed with the test.
func openRedis(t testing.TB, client redis.UniversalClient, opts RedisOptions) *Redis {
	t.Helper()
	r, err := NewRedis(client, opts)
	Ok(t, err)
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func newUpstreamBoltDB(t testing.TB) *boltdb.BoltDB {
	t.Helper()
	db, err := boltdb.New(t.TempDir())
	Ok(t, err)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// guardedBoltDB is a fresh upstream BoltDB behind the guard the server puts
// around it.
func guardedBoltDB(t testing.TB) *legacydb.Guarded {
	t.Helper()
	g, err := legacydb.Guard(newUpstreamBoltDB(t), legacydb.Options{})
	Ok(t, err)
	return g
}

func newUpstreamRedis(t testing.TB, client *redis.Client) *upstreamredis.RedisDB {
	t.Helper()
	db, err := upstreamredis.NewWithClient(client, "", "")
	Ok(t, err)
	return db
}

// flush empties every master behind client.
func flush(t testing.TB, client redis.UniversalClient) {
	t.Helper()
	ctx := context.Background()
	var err error
	if cluster, ok := client.(*redis.ClusterClient); ok {
		err = cluster.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			return m.FlushAll(ctx).Err()
		})
	} else {
		err = client.FlushAll(ctx).Err()
	}
	Ok(t, err)
}

func redisQueueOptions(client redis.UniversalClient, opts RedisOptions) enhancedtest.QueueOptions {
	return enhancedtest.QueueOptions{
		DeleteOutside: func(t *testing.T, lock models.ProjectLock) {
			key := opts.KeyPrefix + "pr/" + models.GenerateLockKey(lock.Project, lock.Workspace)
			Ok(t, client.Del(context.Background(), key).Err())
		},
		Reopen: func(t *testing.T, old enhancedtest.QueueingBackend) enhancedtest.QueueingBackend {
			Ok(t, old.Close())
			return openRedis(t, client, opts)
		},
	}
}

func TestQueueConformanceRedisStandalone(t *testing.T) {
	client := redistest.Start(t).Client(t)
	for _, prefix := range []string{"", "team1:"} {
		t.Run("prefix="+prefix, func(t *testing.T) {
			opts := RedisOptions{KeyPrefix: prefix}
			enhancedtest.RunQueueConformance(t, func(t *testing.T) enhancedtest.QueueingBackend {
				return newTestRedis(t, client, opts)
			}, redisQueueOptions(client, opts))
		})
	}
}

func TestQueueConformanceRedisCluster(t *testing.T) {
	client := redistest.StartCluster(t).Client(t)
	for _, prefix := range []string{"", "{atlantis}:"} {
		t.Run("prefix="+prefix, func(t *testing.T) {
			opts := RedisOptions{KeyPrefix: prefix}
			enhancedtest.RunQueueConformance(t, func(t *testing.T) enhancedtest.QueueingBackend {
				return newTestRedis(t, client, opts)
			}, redisQueueOptions(client, opts))
		})
	}
}

// newQueueingBoltDB is a BoltDB backend over legacy with its queue file at
// path, closed with the test.
func newQueueingBoltDB(t testing.TB, legacy *legacydb.Guarded, path string) *BoltDB {
	t.Helper()
	b := NewBoltDB(legacy, nil)
	t.Cleanup(func() { _ = b.Close() })
	Ok(t, b.OpenQueues(path))
	return b
}

func TestQueueConformanceBoltDB(t *testing.T) {
	// Each case's legacy database, by the case's *testing.T, which the
	// suite passes to DeleteOutside.
	var legacies sync.Map
	enhancedtest.RunQueueConformance(t, func(t *testing.T) enhancedtest.QueueingBackend {
		legacy := guardedBoltDB(t)
		legacies.Store(t, legacy)
		return newQueueingBoltDB(t, legacy, filepath.Join(t.TempDir(), "enhanced-locking-queue.db"))
	}, enhancedtest.QueueOptions{
		// Through the guard, as every other component of the server reaches
		// the legacy database, but not through the backend.
		DeleteOutside: func(t *testing.T, lock models.ProjectLock) {
			legacy, ok := legacies.Load(t)
			Assert(t, ok, "no legacy database for %s", t.Name())
			_, err := legacy.(*legacydb.Guarded).Unlock(lock.Project, lock.Workspace)
			Ok(t, err)
		},
		Reopen: func(t *testing.T, old enhancedtest.QueueingBackend) enhancedtest.QueueingBackend {
			b := old.(*BoltDB)
			legacy, path := b.legacy, b.qdbPath
			Ok(t, b.Close())
			return newQueueingBoltDB(t, legacy, path)
		},
	})
}
