package server

import (
	"context"
	"net"
	"strconv"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/core/boltdb"
	"github.com/runatlantis/atlantis/server/core/db"
	upstreamredis "github.com/runatlantis/atlantis/server/core/redis"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// upstreamRedisAt is upstream's Redis database as --redis-host, --redis-port
// and --redis-db make it.
func upstreamRedisAt(t *testing.T, host string, port, db int) db.Database {
	t.Helper()
	database, err := upstreamredis.NewWithConfig(upstreamredis.Config{Hostname: host, Port: port, DB: db})
	Ok(t, err)
	t.Cleanup(func() { database.Close() }) // nolint: errcheck
	return database
}

func hostPort(t *testing.T, addr string) (string, int) {
	t.Helper()
	host, portText, err := net.SplitHostPort(addr)
	Ok(t, err)
	port, err := strconv.Atoi(portText)
	Ok(t, err)
	return host, port
}

// TestSharesLegacyLocks: whether upstream's database reads our keys is asked
// of Redis, so one server named two ways (a hostname and its IP, sentinels
// and the master's own address) is recognised, and another database, another
// prefix or BoltDB are not taken for it.
func TestSharesLegacyLocks(t *testing.T) {
	ctx := context.Background()
	standalone := redistest.Start(t)
	host, port := hostPort(t, standalone.Addr)
	sentinel := redistest.StartSentinel(t)
	masterHost, masterPort := hostPort(t, sentinel.MasterAddr)
	bolt, err := boltdb.New(t.TempDir())
	Ok(t, err)
	t.Cleanup(func() { bolt.Close() }) // nolint: errcheck

	cases := []struct {
		description   string
		client        redis.UniversalClient
		prefix        string
		lockingDBType string
		legacy        db.Database
		exp           bool
	}{
		{"same server, upstream by hostname, ours by IP", standalone.Client(t), "", BackendRedis, upstreamRedisAt(t, "localhost", port, 0), true},
		{"same server and address", standalone.Client(t), "", BackendRedis, upstreamRedisAt(t, host, port, 0), true},
		{"ours through sentinels, upstream at the master", sentinel.Client(t), "", BackendRedis, upstreamRedisAt(t, masterHost, masterPort, 0), true},
		{"another database on the same server", standalone.Client(t), "", BackendRedis, upstreamRedisAt(t, host, port, 3), false},
		{"a key prefix", standalone.Client(t), "atlantis:", BackendRedis, upstreamRedisAt(t, host, port, 0), false},
		{"upstream on BoltDB", standalone.Client(t), "", BackendBoltDB, bolt, false},
	}
	for _, c := range cases {
		t.Run(c.description, func(t *testing.T) {
			shared, err := sharesLegacyLocks(ctx, c.client, c.prefix, c.lockingDBType, c.legacy)
			Ok(t, err)
			Equals(t, c.exp, shared)
			keys, err := c.client.Keys(ctx, "pr/"+sharedKeysProbeRepo+"*").Result()
			Ok(t, err)
			Equals(t, 0, len(keys)) // the probe is gone
		})
	}
}
