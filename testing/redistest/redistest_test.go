package redistest_test

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

func setGet(t *testing.T, c redis.UniversalClient) {
	t.Helper()
	ctx := context.Background()
	Ok(t, c.Set(ctx, "redistest-key", "value", 0).Err())
	got, err := c.Get(ctx, "redistest-key").Result()
	Ok(t, err)
	Equals(t, "value", got)
}

// refused asserts that nothing listens on addr any more.
func refused(t *testing.T, addr string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		_ = conn.Close()
	}
	ErrContains(t, "connection refused", err)
}

func TestStandalone(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		opts []redistest.Option
	}{
		{"plain", nil},
		{"password", []redistest.Option{redistest.WithPassword("s3cret")}},
		{"acl user", []redistest.Option{redistest.WithACLUser("atlantis", "pw")}},
		{"tls", []redistest.Option{redistest.WithTLS()}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := redistest.Start(t, tc.opts...)
			c := s.Client(t)
			setGet(t, c)
			s.Stop()
			refused(t, s.Addr)
			s.Stop() // idempotent
		})
	}
}

func TestAuthIsEnforced(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	pw := redistest.Start(t, redistest.WithPassword("s3cret"))
	err := redis.NewClient(&redis.Options{Addr: pw.Addr, Password: "wrong"}).Ping(ctx).Err()
	ErrContains(t, "WRONGPASS", err)

	acl := redistest.Start(t, redistest.WithACLUser("atlantis", "pw"))
	err = redis.NewClient(&redis.Options{Addr: acl.Addr}).Ping(ctx).Err()
	Assert(t, err != nil, "default user must be disabled")
}

func TestRestartKeepsDataWithAppendOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := redistest.Start(t, redistest.WithAppendOnly())
	addr := s.Addr
	c := s.Client(t)
	Ok(t, c.Set(ctx, "durable", "yes", 0).Err())

	s.Restart()
	Equals(t, addr, s.Addr)
	got, err := c.Get(ctx, "durable").Result()
	Ok(t, err)
	Equals(t, "yes", got)
}

func TestRestartWithoutAppendOnlyLosesData(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := redistest.Start(t)
	c := s.Client(t)
	Ok(t, c.Set(ctx, "volatile", "yes", 0).Err())
	s.Stop()
	s.Restart()
	Equals(t, redis.Nil, c.Get(ctx, "volatile").Err())
}

func TestTLSCAFiles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := redistest.Start(t, redistest.WithTLS())

	good, err := redistest.ClientTLSConfig(s.CAFile)
	Ok(t, err)
	Ok(t, redis.NewClient(&redis.Options{Addr: s.Addr, TLSConfig: good}).Ping(ctx).Err())

	wrong, err := redistest.ClientTLSConfig(s.WrongCAFile)
	Ok(t, err)
	err = redis.NewClient(&redis.Options{Addr: s.Addr, TLSConfig: wrong, MaxRetries: -1}).Ping(ctx).Err()
	ErrContains(t, "certificate signed by unknown authority", err)

	err = redis.NewClient(&redis.Options{Addr: s.Addr, TLSConfig: &tls.Config{InsecureSkipVerify: true}}).Ping(ctx).Err() //nolint:gosec // proves the port speaks TLS
	Ok(t, err)
	err = redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1}).Ping(ctx).Err()
	Assert(t, err != nil, "plaintext must be refused on a TLS-only port")
}

func TestCluster(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t)
	Equals(t, 3, len(cl.Addrs))
	c := cl.Client(t)
	ctx := context.Background()
	// Keys spread over the three masters.
	for _, k := range []string{"a", "b", "c", "d", "e", "f"} {
		Ok(t, c.Set(ctx, k, k, 0).Err())
	}
	setGet(t, c)

	redistest.ResetStats(t, c)
	for _, k := range []string{"a", "b", "c", "d", "e", "f"} {
		Ok(t, c.Get(ctx, k).Err())
	}
	Equals(t, int64(6), redistest.CommandCount(t, c)["get"])

	for _, n := range cl.Nodes {
		n.Stop()
		refused(t, n.Addr)
	}
}

func TestSentinel(t *testing.T) {
	t.Parallel()
	s := redistest.StartSentinel(t)
	Equals(t, "mymaster", s.MasterName)
	Equals(t, 1, len(s.SentinelAddrs))
	c := s.Client(t)
	setGet(t, c)

	// The write reached the replica, so the set really replicates.
	rc := s.Replica.Client(t)
	ctx := context.Background()
	Ok(t, c.Do(ctx, "WAIT", 1, 2000).Err())
	got, err := rc.Get(ctx, "redistest-key").Result()
	Ok(t, err)
	Equals(t, "value", got)

	s.Master.Stop()
	refused(t, s.MasterAddr)
}

func TestCommandCount(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := redistest.Start(t)
	c := s.Client(t)
	Ok(t, c.Ping(ctx).Err())
	redistest.ResetStats(t, c)
	Ok(t, c.Set(ctx, "k", "v", 0).Err())
	Ok(t, c.Get(ctx, "k").Err())
	Ok(t, c.Get(ctx, "k").Err())
	counts := redistest.CommandCount(t, c)
	Equals(t, int64(1), counts["set"])
	Equals(t, int64(2), counts["get"])
}

// TestKillPauseAndFsync: Kill ends the process at once and Restart brings
// back what the append-only file synced; Pause makes the server answer
// nothing until Resume.
func TestKillPauseAndFsync(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := redistest.Start(t, redistest.WithAppendFsync("always"))
	c := s.Client(t)
	Equals(t, "always", c.ConfigGet(ctx, "appendfsync").Val()["appendfsync"])
	Ok(t, c.Set(ctx, "synced", "yes", 0).Err())

	s.Kill()
	refused(t, s.Addr)
	s.Restart()
	got, err := c.Get(ctx, "synced").Result()
	Ok(t, err)
	Equals(t, "yes", got)

	Ok(t, s.Pause())
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	Assert(t, c.Get(short, "synced").Err() != nil, "a paused server answered")
	Ok(t, s.Resume())
	Ok(t, c.Get(ctx, "synced").Err())
}

// TestReplicatedClusterFailsOver: each master has a replica, and killing the
// master of a key promotes its replica, which has the key.
func TestReplicatedClusterFailsOver(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cl := redistest.StartReplicatedCluster(t)
	Equals(t, 3, len(cl.Nodes))
	Equals(t, 3, len(cl.Replicas))
	c := cl.Client(t)
	master, err := c.MasterForKey(ctx, "k")
	Ok(t, err)
	// The key must be on the replica before the kill, or the failover loses
	// it. WAIT counts the writes of its own connection, so it follows the
	// SET on one connection to the key's master.
	var acked *redis.Cmd
	_, err = master.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, "k", "v", 0)
		acked = p.Do(ctx, "WAIT", 1, 10000)
		return nil
	})
	Ok(t, err)
	n, err := acked.Int()
	Ok(t, err)
	Equals(t, 1, n)
	old := cl.Node(master.Options().Addr)
	Assert(t, old != nil, "no process listens on %s", master.Options().Addr)

	old.Kill()
	deadline := time.Now().Add(time.Minute)
	for {
		c.ReloadState(ctx)
		got, err := c.Get(ctx, "k").Result()
		if err == nil {
			Equals(t, "v", got)
			break
		}
		Assert(t, time.Now().Before(deadline), "no failover within a minute: %v", err)
		time.Sleep(200 * time.Millisecond)
	}
	now, err := c.MasterForKey(ctx, "k")
	Ok(t, err)
	Assert(t, now.Options().Addr != old.Addr, "the killed master still serves k")
}

func TestProxy_RecordsTheCommandsItForwards(t *testing.T) {
	srv := redistest.Start(t)
	proxy := redistest.StartProxy(t, srv.Addr)
	proxy.RecordCommands()
	client := redis.NewClient(&redis.Options{Addr: proxy.Addr})
	defer client.Close() // nolint: errcheck
	ctx := context.Background()
	before := time.Now()
	Ok(t, client.Set(ctx, "key", "a\r\nvalue", 0).Err())
	Ok(t, client.Del(ctx, "key").Err())
	// The recorder parses beside the forwarding, so the last command may be
	// recorded an instant after its reply came back.
	var got [][]string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		got = nil
		for _, c := range proxy.Commands() {
			Assert(t, !c.At.Before(before), "%v recorded at %s, before it was sent", c.Args, c.At)
			if name := strings.ToUpper(c.Args[0]); name == "SET" || name == "DEL" {
				got = append(got, c.Args)
			}
		}
		if len(got) >= 2 || time.Now().After(deadline) {
			break
		}
	}
	Equals(t, [][]string{{"set", "key", "a\r\nvalue"}, {"del", "key"}}, got)
}
