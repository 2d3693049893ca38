package chaos

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/e2e/e2ekit"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// failoverTimeout bounds the promotion of a replica after its master died:
// the sentinel's down-after is 1 s, the cluster's node timeout 2 s.
const failoverTimeout = 30 * time.Second

// waitReplicas is how an operator with a replica per master runs the
// replicas: every write waits for it (see TestFailoverLosesAcknowledgedLocks
// for what a failover loses without).
var waitReplicas = []string{"--enhanced-locking-redis-wait-replicas=1"}

// TestSentinelFailover: under traffic, with a lock held and a pull queued,
// the master is SIGKILLed; the sentinel promotes its replica, and the old
// master comes back from its append-only file and is made a replica of the
// new one. Writes fail closed until it does (the new master has no replica
// to acknowledge them), and every lock write the replicas were told
// succeeded survives, even a second failover back to the old master.
func TestSentinelFailover(t *testing.T) {
	w := newWorld(t, "sentinel-failover", worldOptions{store: sentinel, args: waitReplicas})
	tr, script := w.startScenario()

	sc := redis.NewSentinelClient(&redis.Options{Addr: w.sentinel.SentinelAddrs[0]})
	defer sc.Close() // nolint: errcheck
	old := w.sentinelMaster(sc)
	old.Kill()
	t.Logf("%s: master %s killed", w.name, old.Addr)
	w.waitUntil("the sentinel to promote the replica", failoverTimeout, func() (bool, string) {
		ctx, cancel := context.WithTimeout(w.ctx, time.Second)
		defer cancel()
		addr, err := sc.GetMasterAddrByName(ctx, w.sentinel.MasterName).Result()
		now := strings.Join(addr, ":")
		return err == nil && now != old.Addr, fmt.Sprintf("master %s (%v)", now, err)
	})
	old.Restart()
	t.Logf("%s: the replica was promoted; %s is back from its AOF, to become its replica", w.name, old.Addr)

	w.endScenario(tr, script)
}

// TestClusterFailover: as TestSentinelFailover on a Redis Cluster of three
// masters with a replica each: the master of the slot holding the
// scenario's lock and queue is SIGKILLed, its replica promoted, and the old
// master rejoins as a replica.
func TestClusterFailover(t *testing.T) {
	w := newWorld(t, "cluster-failover", worldOptions{store: cluster, args: waitReplicas})
	tr, script := w.startScenario()

	cc := w.locks.(*redis.ClusterClient)
	key := e2ekit.LockKey(repoFull, scriptDir)
	old := w.masterOf(cc, key)
	old.Kill()
	t.Logf("%s: master %s of %s killed", w.name, old.Addr, key)
	w.waitUntil("the cluster to promote the replica", failoverTimeout, func() (bool, string) {
		cc.ReloadState(w.ctx)
		ctx, cancel := context.WithTimeout(w.ctx, time.Second)
		defer cancel()
		master, err := cc.MasterForKey(ctx, key)
		if err != nil {
			return false, err.Error()
		}
		err = master.Ping(ctx).Err()
		return err == nil && master.Options().Addr != old.Addr, fmt.Sprintf("master %s (%v)", master.Options().Addr, err)
	})
	old.Restart()
	t.Logf("%s: the replica was promoted; %s is back as its replica", w.name, old.Addr)

	w.endScenario(tr, script)
}

// sentinelMaster is the process the sentinel names master now: a stall of
// the machine may have failed it over already.
func (w *world) sentinelMaster(sc *redis.SentinelClient) *redistest.Server {
	w.t.Helper()
	addr, err := sc.GetMasterAddrByName(w.ctx, w.sentinel.MasterName).Result()
	Ok(w.t, err)
	for _, s := range []*redistest.Server{w.sentinel.Master, w.sentinel.Replica} {
		if s.Addr == strings.Join(addr, ":") {
			return s
		}
	}
	w.t.Fatalf("%s: the sentinel names master %v, which is no process of the set", w.name, addr)
	return nil
}

// masterOf is the process serving key's slot as master.
func (w *world) masterOf(cc *redis.ClusterClient, key string) *redistest.Server {
	w.t.Helper()
	master, err := cc.MasterForKey(w.ctx, key)
	Ok(w.t, err)
	node := w.cluster.Node(master.Options().Addr)
	Assert(w.t, node != nil, "no process of the cluster listens on %s", master.Options().Addr)
	return node
}
