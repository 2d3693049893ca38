package redistest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	sentinelMasterName   = "mymaster"
	sentinelReadyTimeout = 20 * time.Second
)

// Sentinel is one master, one replica and one sentinel with quorum 1.
// Failure detection is tuned short (1 s down-after) so failover tests are fast.
type Sentinel struct {
	MasterName    string
	MasterAddr    string
	ReplicaAddr   string
	SentinelAddrs []string

	Master    *Server
	Replica   *Server
	Sentinels []*Server
	// Link is the replica's way to the master with WithReplicationLink,
	// else nil.
	Link *Proxy
}

// SentinelOption configures StartSentinel.
type SentinelOption func(*sentinelConfig)

type sentinelConfig struct {
	link bool
	// node configures the master and the replica.
	node config
}

// WithNodeOptions starts the master and the replica with opts, for example
// WithAppendFsync: Redis's replication docs advise persistence on every node
// of a replicated set, since a master that restarts empty can be promoted
// again and wipe its replicas.
func WithNodeOptions(opts ...Option) SentinelOption {
	return func(c *sentinelConfig) {
		for _, o := range opts {
			o(&c.node)
		}
	}
}

// WithReplicationLink makes the replica replicate through a Proxy
// (Sentinel.Link) whose DropReplies loses the replication stream, as a slow
// or cut link between master and replica does: the master goes on
// acknowledging writes the replica never gets. The sentinel's failover
// timeout is then a minute, so that it does not repoint the replica at the
// master directly meanwhile.
func WithReplicationLink() SentinelOption {
	return func(c *sentinelConfig) { c.link = true }
}

// StartSentinel starts the master, then the replica, waits until the replica
// is in sync, then starts the sentinel and waits until it reports the master
// and knows the replica.
func StartSentinel(t testing.TB, opts ...SentinelOption) *Sentinel {
	t.Helper()
	var cfg sentinelConfig
	for _, o := range opts {
		o(&cfg)
	}
	master := newServer(t, cfg.node)
	master.start()

	var link *Proxy
	upstream := master.Addr
	if cfg.link {
		link = StartProxy(t, master.Addr)
		upstream = link.Addr
	}
	host, port, _ := strings.Cut(upstream, ":")
	replica := newServer(t, cfg.node)
	replica.extraConf = []string{"replicaof " + host + " " + port}
	replica.start()
	waitFor(t, "replica "+replica.Addr+" in sync with "+master.Addr, func(ctx context.Context) error {
		return replicaInSync(ctx, replica)
	})

	failoverTimeout := 5000
	if cfg.link {
		failoverTimeout = 60000
	}
	sentinel := newServer(t, config{})
	sentinel.sentinel = true
	sentinel.extraConf = []string{
		fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d 1", sentinelMasterName, master.port),
		fmt.Sprintf("sentinel down-after-milliseconds %s 1000", sentinelMasterName),
		fmt.Sprintf("sentinel failover-timeout %s %d", sentinelMasterName, failoverTimeout),
	}
	sentinel.start()

	s := &Sentinel{
		MasterName:    sentinelMasterName,
		MasterAddr:    master.Addr,
		ReplicaAddr:   replica.Addr,
		SentinelAddrs: []string{sentinel.Addr},
		Master:        master,
		Replica:       replica,
		Sentinels:     []*Server{sentinel},
		Link:          link,
	}
	sc := redis.NewSentinelClient(&redis.Options{Addr: sentinel.Addr})
	defer sc.Close()
	waitFor(t, "sentinel "+sentinel.Addr+" to report master and replica", func(ctx context.Context) error {
		addr, err := sc.GetMasterAddrByName(ctx, sentinelMasterName).Result()
		if err != nil {
			return err
		}
		if got := strings.Join(addr, ":"); got != master.Addr {
			return fmt.Errorf("sentinel reports master %s, want %s", got, master.Addr)
		}
		replicas, err := sc.Replicas(ctx, sentinelMasterName).Result()
		if err != nil {
			return err
		}
		for _, r := range replicas {
			if r["ip"]+":"+r["port"] == replica.Addr && !strings.Contains(r["flags"], "down") &&
				!strings.Contains(r["flags"], "disconnected") {
				return nil
			}
		}
		return fmt.Errorf("sentinel does not know replica %s yet: %v", replica.Addr, replicas)
	})
	return s
}

// FailoverOptions returns go-redis failover options for this set.
func (s *Sentinel) FailoverOptions() *redis.FailoverOptions {
	return &redis.FailoverOptions{
		MasterName:    s.MasterName,
		SentinelAddrs: append([]string(nil), s.SentinelAddrs...),
		DialTimeout:   time.Second,
		ReadTimeout:   2 * time.Second,
		WriteTimeout:  2 * time.Second,
	}
}

// Client returns a failover client that finds the master through the
// sentinel, closed when the test ends.
func (s *Sentinel) Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewFailoverClient(s.FailoverOptions())
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func replicaInSync(ctx context.Context, replica *Server) error {
	c := redis.NewClient(replica.Options())
	defer c.Close()
	info, err := c.Info(ctx, "replication").Result()
	if err != nil {
		return err
	}
	if !strings.Contains(info, "master_link_status:up") || !strings.Contains(info, "master_sync_in_progress:0") {
		return fmt.Errorf("replica not in sync:\n%s", info)
	}
	return nil
}

// waitFor polls check until it succeeds or sentinelReadyTimeout passes.
func waitFor(t testing.TB, what string, check func(ctx context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(sentinelReadyTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := check(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("redistest: timed out after %s waiting for %s: %v", sentinelReadyTimeout, what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
