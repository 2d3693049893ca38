package redis_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/redis"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// writeScript writes a key the way the lock scripts do.
var writeScript = goredis.NewScript(`return redis.call('SET', KEYS[1], ARGV[1])`)

// TestWaitReplicas: with WaitReplicas, a write is reported done only once a
// replica acknowledged it, whether it is a command, a script or part of a
// pipeline; while the replica does not acknowledge, writes fail closed with
// ErrNotReplicated and reads still answer. Without it, the master
// acknowledges writes its replica never got, which is what a failover loses.
func TestWaitReplicas(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := redistest.StartSentinel(t, redistest.WithReplicationLink())
	cfg := redis.Config{Mode: redis.ModeSentinel, Addrs: s.SentinelAddrs, SentinelMaster: s.MasterName, WaitReplicas: 1}
	waiting := connect(t, cfg)
	cfg.WaitReplicas = 0
	plain := connect(t, cfg)
	replica := s.Replica.Client(t)

	writes := []struct {
		name  string
		write func(c goredis.UniversalClient, key string) error
	}{
		{"command", func(c goredis.UniversalClient, key string) error { return c.Set(ctx, key, "v", 0).Err() }},
		{"script", func(c goredis.UniversalClient, key string) error {
			return writeScript.Run(ctx, c, []string{key}, "v").Err()
		}},
		{"pipeline", func(c goredis.UniversalClient, key string) error {
			_, err := c.Pipelined(ctx, func(p goredis.Pipeliner) error {
				p.Set(ctx, key, "v", 0)
				p.Get(ctx, key)
				return nil
			})
			return err
		}},
	}
	for _, w := range writes {
		key := "linked-" + w.name
		Ok(t, w.write(waiting, key))
		// Acknowledged, hence on the replica already.
		Equals(t, "v", replica.Get(ctx, key).Val())
	}

	// The replica stops getting the replication stream once it next sends an
	// acknowledgement, which it does every second.
	s.Link.DropReplies(true)
	time.Sleep(1500 * time.Millisecond)
	for _, w := range writes {
		err := w.write(waiting, "cut-"+w.name)
		Assert(t, errors.Is(err, redis.ErrNotReplicated), "%s: want ErrNotReplicated, got %v", w.name, err)
		ErrContains(t, "--enhanced-locking-redis-wait-replicas", err)
		Ok(t, w.write(plain, "unseen-"+w.name))
	}
	Ok(t, waiting.Get(ctx, "linked-command").Err())
	Equals(t, "v", plain.Get(ctx, "unseen-command").Val())
	Equals(t, goredis.Nil, replica.Get(ctx, "unseen-command").Err())

	_, err := waiting.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		p.Set(ctx, "in-a-transaction", "v", 0)
		return nil
	})
	Assert(t, errors.Is(err, redis.ErrNotReplicated), "a transaction: want ErrNotReplicated, got %v", err)
}

// TestWaitReplicasOnEachClusterNode: in a cluster, a write waits for the
// replica of the master it reached, so a replica cut off fails the writes of
// its master's slots only.
func TestWaitReplicasOnEachClusterNode(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cl := redistest.StartReplicatedCluster(t)
	c := connect(t, redis.Config{Mode: redis.ModeCluster, Addrs: cl.Addrs, WaitReplicas: 1})
	Ok(t, c.Set(ctx, "a", "v", 0).Err())

	cc := c.(*goredis.ClusterClient)
	master, err := cc.MasterForKey(ctx, "a")
	Ok(t, err)
	var cut *redistest.Server
	for _, r := range cl.Replicas {
		role, err := r.Client(t).Do(ctx, "ROLE").Slice()
		Ok(t, err)
		if len(role) > 2 && strings.HasSuffix(master.Options().Addr, fmt.Sprintf(":%v", role[2])) {
			cut = r
		}
	}
	Assert(t, cut != nil, "no replica of %s", master.Options().Addr)
	Ok(t, cut.Pause())
	defer cut.Resume() // nolint: errcheck

	err = c.Set(ctx, "a", "w", 0).Err()
	Assert(t, errors.Is(err, redis.ErrNotReplicated), "want ErrNotReplicated for a key of the cut-off replica's master, got %v", err)
	for _, k := range []string{"b", "c", "d", "e", "f", "g"} {
		if m, err := cc.MasterForKey(ctx, k); err == nil && m.Options().Addr != master.Options().Addr {
			Ok(t, c.Set(ctx, k, "v", 0).Err())
		}
	}
}
