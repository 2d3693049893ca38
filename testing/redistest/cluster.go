package redistest

import (
	"context"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

const clusterReadyTimeout = 20 * time.Second

// Cluster is a Redis Cluster of three masters, with no replicas
// (StartCluster) or one each (StartReplicatedCluster).
type Cluster struct {
	// Addrs are the masters' addresses as the cluster was created; the seeds
	// a client starts from.
	Addrs []string
	// Nodes are the masters' processes as the cluster was created, for
	// stopping or restarting one.
	Nodes []*Server
	// Replicas are the replicas' processes as the cluster was created (after
	// a failover, Node finds a process by address whatever its role).
	Replicas []*Server
}

// StartCluster starts three cluster-enabled servers, joins them with
// `redis-cli --cluster create` and waits until every node reports
// cluster_state:ok.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	return startCluster(t, 0)
}

// StartReplicatedCluster is StartCluster with one replica per master, so that
// a master's death is a failover (after cluster-node-timeout, 2 s) rather
// than an outage. It returns once every replica is in sync.
func StartReplicatedCluster(t testing.TB) *Cluster {
	t.Helper()
	return startCluster(t, 1)
}

func startCluster(t testing.TB, replicasPerMaster int) *Cluster {
	t.Helper()
	requireBinary(t, "redis-cli")
	var all []*Server
	var addrs []string
	for i := 0; i < 3*(1+replicasPerMaster); i++ {
		s := newServer(t, config{})
		s.cluster = true
		s.start()
		all = append(all, s)
		addrs = append(addrs, s.Addr)
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicasPerMaster), "--cluster-yes")
	out, err := exec.Command("redis-cli", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("redistest: redis-cli --cluster create %s: %v\n%s", strings.Join(addrs, " "), err, out)
	}
	c := &Cluster{}
	for _, s := range all {
		// redis-cli picks the roles; ask each node which it got.
		if role := nodeRole(t, s); role == "master" {
			c.Nodes = append(c.Nodes, s)
			c.Addrs = append(c.Addrs, s.Addr)
		} else {
			c.Replicas = append(c.Replicas, s)
		}
	}
	waitClusterOK(t, all)
	for _, r := range c.Replicas {
		waitFor(t, "cluster replica "+r.Addr+" in sync", func(ctx context.Context) error {
			return replicaInSync(ctx, r)
		})
	}
	return c
}

// Node is the process listening on addr, master or replica.
func (c *Cluster) Node(addr string) *Server {
	for _, s := range append(append([]*Server(nil), c.Nodes...), c.Replicas...) {
		if s.Addr == addr {
			return s
		}
	}
	return nil
}

// nodeRole is "master" or "slave", as ROLE answers.
func nodeRole(t testing.TB, s *Server) string {
	t.Helper()
	nc := redis.NewClient(s.Options())
	defer nc.Close()
	role, err := nc.Do(context.Background(), "ROLE").Slice()
	if err != nil || len(role) == 0 {
		t.Fatalf("redistest: ROLE on cluster node %s: %v", s.Addr, err)
	}
	name, _ := role[0].(string)
	return name
}

func waitClusterOK(t testing.TB, nodes []*Server) {
	t.Helper()
	deadline := time.Now().Add(clusterReadyTimeout)
	for _, n := range nodes {
		nc := redis.NewClient(n.Options())
		for {
			info, err := nc.ClusterInfo(context.Background()).Result()
			if err == nil && strings.Contains(info, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				_ = nc.Close()
				t.Fatalf("redistest: cluster node %s not ok within %s (err: %v):\n%s\n--- node log ---\n%s",
					n.Addr, clusterReadyTimeout, err, info, n.logTail())
			}
			time.Sleep(50 * time.Millisecond)
		}
		_ = nc.Close()
	}
}

// Options returns go-redis cluster options for this cluster.
func (c *Cluster) Options() *redis.ClusterOptions {
	return &redis.ClusterOptions{
		Addrs:                    append([]string(nil), c.Addrs...),
		DialTimeout:              time.Second,
		ReadTimeout:              2 * time.Second,
		WriteTimeout:             2 * time.Second,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
}

// Client returns a cluster client, closed when the test ends.
func (c *Cluster) Client(t testing.TB) *redis.ClusterClient {
	t.Helper()
	cc := redis.NewClusterClient(c.Options())
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}
