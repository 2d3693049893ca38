package redis_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/redis"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// secret is distinctive so a leak into any error text is unmistakable.
const secret = "pw-Zq8!never-print-me"

func connect(t *testing.T, cfg redis.Config) goredis.UniversalClient {
	t.Helper()
	c, err := redis.NewClient(context.Background(), cfg)
	Ok(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func setGet(t *testing.T, c goredis.UniversalClient) {
	t.Helper()
	ctx := context.Background()
	Ok(t, c.Set(ctx, "enhanced-locking-test", "v", 0).Err())
	got, err := c.Get(ctx, "enhanced-locking-test").Result()
	Ok(t, err)
	Equals(t, "v", got)
}

func TestNewClient_ConnectsInEachMode(t *testing.T) {
	t.Parallel()
	plain := redistest.Start(t)
	withPassword := redistest.Start(t, redistest.WithPassword(secret))
	withACL := redistest.Start(t, redistest.WithACLUser("atlantis", secret))
	withTLS := redistest.Start(t, redistest.WithTLS())
	cluster := redistest.StartCluster(t)
	sentinel := redistest.StartSentinel(t)

	cases := []struct {
		name     string
		cfg      redis.Config
		wantType string
	}{
		{"standalone", redis.Config{Mode: redis.ModeStandalone, Addrs: []string{plain.Addr}}, "*redis.Client"},
		{"empty mode means standalone", redis.Config{Addrs: []string{plain.Addr}}, "*redis.Client"},
		{"standalone with db", redis.Config{Addrs: []string{plain.Addr}, DB: 3}, "*redis.Client"},
		{"requirepass", redis.Config{Addrs: []string{withPassword.Addr}, Password: secret}, "*redis.Client"},
		{"acl user", redis.Config{Addrs: []string{withACL.Addr}, Username: "atlantis", Password: secret}, "*redis.Client"},
		{"tls with ca file", redis.Config{Addrs: []string{withTLS.Addr}, TLSEnabled: true, TLSCAFile: withTLS.CAFile}, "*redis.Client"},
		{"tls insecure skip verify", redis.Config{Addrs: []string{withTLS.Addr}, TLSEnabled: true, TLSInsecureSkipVerify: true}, "*redis.Client"},
		{"cluster", redis.Config{Mode: redis.ModeCluster, Addrs: cluster.Addrs}, "*redis.ClusterClient"},
		{"cluster with one seed and a trailing comma", redis.Config{Mode: redis.ModeCluster, Addrs: []string{cluster.Addrs[0], " "}}, "*redis.ClusterClient"},
		{"sentinel", redis.Config{Mode: redis.ModeSentinel, Addrs: sentinel.SentinelAddrs, SentinelMaster: sentinel.MasterName}, "*redis.Client"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := connect(t, tc.cfg)
			Equals(t, tc.wantType, fmt.Sprintf("%T", c))
			setGet(t, c)
		})
	}
}

func TestNewClient_SentinelWritesReachTheMaster(t *testing.T) {
	t.Parallel()
	s := redistest.StartSentinel(t)
	c := connect(t, redis.Config{Mode: redis.ModeSentinel, Addrs: s.SentinelAddrs, SentinelMaster: s.MasterName, DB: 2})
	ctx := context.Background()
	Ok(t, c.Set(ctx, "k", "v", 0).Err())
	master := goredis.NewClient(&goredis.Options{Addr: s.MasterAddr, DB: 2})
	defer master.Close()
	got, err := master.Get(ctx, "k").Result()
	Ok(t, err)
	Equals(t, "v", got)
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	Ok(t, err)
	addr := l.Addr().String()
	Ok(t, l.Close())
	return addr
}

// silentAddr returns a loopback address that accepts connections and never
// replies, like a server hung or behind a black-holing firewall.
func silentAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	Ok(t, err)
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				_ = c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	return l.Addr().String()
}

func TestNewClient_Unreachable(t *testing.T) {
	t.Parallel()
	const dialTimeout = 700 * time.Millisecond
	dead1, dead2, dead3 := deadAddr(t), deadAddr(t), deadAddr(t)
	silent := silentAddr(t)
	cases := []struct {
		name string
		cfg  redis.Config
		want []string
	}{
		{"standalone refused", redis.Config{Addrs: []string{dead1}}, []string{dead1}},
		{"standalone that never answers", redis.Config{Addrs: []string{silent}}, []string{silent}},
		{"cluster", redis.Config{Mode: redis.ModeCluster, Addrs: []string{dead1, dead2}}, []string{dead1, dead2}},
		{"sentinel", redis.Config{Mode: redis.ModeSentinel, Addrs: []string{dead3}, SentinelMaster: "mymaster"}, []string{dead3, "sentinels"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.cfg.DialTimeout = dialTimeout
			tc.cfg.Password = secret
			start := time.Now()
			_, err := redis.NewClient(context.Background(), tc.cfg)
			elapsed := time.Since(start)
			ErrContains(t, "is redis running and reachable?", err)
			for _, w := range tc.want {
				ErrContains(t, w, err)
			}
			Assert(t, elapsed < dialTimeout+2*time.Second, "NewClient took %s, dial timeout is %s", elapsed, dialTimeout)
			assertNoSecret(t, err)
		})
	}
}

func TestNewClient_AuthenticationFailures(t *testing.T) {
	t.Parallel()
	pw := redistest.Start(t, redistest.WithPassword(secret))
	acl := redistest.Start(t, redistest.WithACLUser("atlantis", secret))
	cases := []struct {
		name     string
		cfg      redis.Config
		wantUser string
	}{
		{"wrong password", redis.Config{Addrs: []string{pw.Addr}, Password: secret + "-wrong"}, `"default"`},
		{"missing password", redis.Config{Addrs: []string{pw.Addr}}, `"default"`},
		{"wrong acl password", redis.Config{Addrs: []string{acl.Addr}, Username: "atlantis", Password: "not-" + secret}, `"atlantis"`},
		{"unknown acl user", redis.Config{Addrs: []string{acl.Addr}, Username: "nobody", Password: secret}, `"nobody"`},
		{"acl server, default user disabled", redis.Config{Addrs: []string{acl.Addr}, Password: secret}, `"default"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := redis.NewClient(context.Background(), tc.cfg)
			ErrContains(t, "authentication failed for user "+tc.wantUser, err)
			ErrContains(t, "check --enhanced-locking-redis-username/--enhanced-locking-redis-password", err)
			assertNoSecret(t, err)
		})
	}
}

func TestNewClient_TLSFailures(t *testing.T) {
	t.Parallel()
	tlsServer := redistest.Start(t, redistest.WithTLS())
	plain := redistest.Start(t)
	cases := []struct {
		name string
		cfg  redis.Config
		want []string
	}{
		{
			"wrong CA names the CA file",
			redis.Config{Addrs: []string{tlsServer.Addr}, TLSEnabled: true, TLSCAFile: tlsServer.WrongCAFile},
			[]string{tlsServer.WrongCAFile, "--enhanced-locking-redis-tls-ca-file", "x509"},
		},
		{
			"system trust store does not know a private CA",
			redis.Config{Addrs: []string{tlsServer.Addr}, TLSEnabled: true},
			[]string{"system trust store", "set --enhanced-locking-redis-tls-ca-file"},
		},
		{
			"TLS against a plaintext server",
			redis.Config{Addrs: []string{plain.Addr}, TLSEnabled: true, TLSCAFile: tlsServer.CAFile, DialTimeout: time.Second},
			[]string{plain.Addr, "server's TLS matches --enhanced-locking-redis-tls-enabled (on)"},
		},
		{
			"plaintext against a TLS-only server",
			redis.Config{Addrs: []string{tlsServer.Addr}, DialTimeout: time.Second},
			[]string{tlsServer.Addr, "server's TLS matches --enhanced-locking-redis-tls-enabled (off)"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Password = secret
			_, err := redis.NewClient(context.Background(), tc.cfg)
			for _, w := range tc.want {
				ErrContains(t, w, err)
			}
			assertNoSecret(t, err)
		})
	}
}

func TestNewClient_WrongShape(t *testing.T) {
	t.Parallel()
	plain := redistest.Start(t)
	s := redistest.StartSentinel(t)
	cases := []struct {
		name string
		cfg  redis.Config
		want []string
	}{
		{"cluster mode against a standalone server", redis.Config{Mode: redis.ModeCluster, Addrs: []string{plain.Addr}},
			[]string{"is not a cluster node", "--enhanced-locking-redis-mode=standalone"}},
		{"sentinel mode against a data node", redis.Config{Mode: redis.ModeSentinel, Addrs: []string{plain.Addr}, SentinelMaster: "mymaster"},
			[]string{"are not sentinels"}},
		{"unknown sentinel master", redis.Config{Mode: redis.ModeSentinel, Addrs: s.SentinelAddrs, SentinelMaster: "no-such-master"},
			[]string{`master named "no-such-master"`, "--enhanced-locking-redis-sentinel-master"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := redis.NewClient(context.Background(), tc.cfg)
			for _, w := range tc.want {
				ErrContains(t, w, err)
			}
		})
	}
}

func TestConfig_Validate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	Ok(t, os.WriteFile(notPEM, []byte("hello"), 0o600))
	missing := filepath.Join(dir, "missing.pem")

	ok := []string{"127.0.0.1:6379"}
	cases := []struct {
		name string
		cfg  redis.Config
		want []string
	}{
		{"unknown mode", redis.Config{Mode: "ring", Addrs: ok},
			[]string{`--enhanced-locking-redis-mode="ring"`, "standalone, cluster or sentinel"}},
		{"no addrs", redis.Config{}, []string{"--enhanced-locking-redis-addrs is empty", "host:port"}},
		{"blank addrs", redis.Config{Mode: redis.ModeCluster, Addrs: []string{" ", ""}},
			[]string{"--enhanced-locking-redis-addrs is empty", "cluster seed nodes"}},
		{"addr without port", redis.Config{Addrs: []string{"redis.internal"}},
			[]string{"--enhanced-locking-redis-addrs", `"redis.internal" is not host:port`}},
		{"standalone with two addrs", redis.Config{Addrs: []string{"a:1", "b:2"}},
			[]string{"--enhanced-locking-redis-addrs has 2 addresses (a:1,b:2)", "--enhanced-locking-redis-mode=cluster"}},
		{"sentinel without master", redis.Config{Mode: redis.ModeSentinel, Addrs: ok},
			[]string{"--enhanced-locking-redis-sentinel-master is empty", "sentinel monitor"}},
		{"cluster with db", redis.Config{Mode: redis.ModeCluster, Addrs: ok, DB: 2},
			[]string{"--enhanced-locking-redis-db=2", "only has database 0"}},
		{"negative db", redis.Config{Addrs: ok, DB: -1}, []string{"--enhanced-locking-redis-db=-1"}},
		{"negative pool size", redis.Config{Addrs: ok, PoolSize: -1}, []string{"--enhanced-locking-redis-pool-size=-1"}},
		{"negative replica count", redis.Config{Addrs: ok, WaitReplicas: -1}, []string{"--enhanced-locking-redis-wait-replicas=-1", "use 0 not to wait"}},
		{"negative dial timeout", redis.Config{Addrs: ok, DialTimeout: -time.Second}, []string{"--enhanced-locking-redis-dial-timeout=-1s"}},
		{"ca file without tls", redis.Config{Addrs: ok, TLSCAFile: notPEM},
			[]string{"--enhanced-locking-redis-tls-ca-file=" + notPEM, "set --enhanced-locking-redis-tls-enabled=true"}},
		{"ca file unreadable", redis.Config{Addrs: ok, TLSEnabled: true, TLSCAFile: missing},
			[]string{"--enhanced-locking-redis-tls-ca-file=" + missing + " cannot be read", "no such file"}},
		{"ca file not PEM", redis.Config{Addrs: ok, TLSEnabled: true, TLSCAFile: notPEM},
			[]string{"--enhanced-locking-redis-tls-ca-file=" + notPEM + " holds no PEM certificate"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// NewClient must reject these before dialling: 127.0.0.1:6379
			// may well have a server on it.
			_, err := redis.NewClient(context.Background(), tc.cfg)
			Assert(t, err != nil, "expected an error")
			for _, w := range tc.want {
				ErrContains(t, w, err)
			}
		})
	}
	// The CA file error keeps its cause for callers.
	_, err := redis.NewClient(context.Background(), redis.Config{Addrs: ok, TLSEnabled: true, TLSCAFile: missing})
	Assert(t, errors.Is(err, os.ErrNotExist), "want os.ErrNotExist in the chain, got %v", err)
}

func TestPasswordNeverPrinted(t *testing.T) {
	t.Parallel()
	cfg := redis.Config{Addrs: []string{"127.0.0.1:6379"}, Username: "atlantis", Password: secret}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		out := fmt.Sprintf(verb, cfg)
		Assert(t, !strings.Contains(out, secret), "%s of Config printed the password: %s", verb, out)
		Assert(t, strings.Contains(out, "[redacted]"), "%s of Config should mark the password redacted: %s", verb, out)
	}

	// A password pasted into the address flag is echoed by validation; it
	// must come out redacted.
	_, err := redis.NewClient(context.Background(), redis.Config{Addrs: []string{secret}, Password: secret})
	ErrContains(t, "[redacted]", err)
	assertNoSecret(t, err)
}

// assertNoSecret checks the error and every error it wraps.
func assertNoSecret(t *testing.T, err error) {
	t.Helper()
	for e := err; e != nil; e = errors.Unwrap(e) {
		Assert(t, !strings.Contains(e.Error(), secret), "password leaked into error: %s", e.Error())
	}
}
