// Package redis builds the Redis client that enhanced locking runs on, for a
// standalone server, a Redis Cluster or a sentinel-managed master, and watches
// its health.
//
// Upstream Atlantis has its own server/core/redis (the RedisDB lock database);
// this package only makes connections and leaves data to its callers.
package redis

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Modes name the Redis deployment shapes NewClient connects to.
const (
	ModeStandalone = "standalone"
	ModeCluster    = "cluster"
	ModeSentinel   = "sentinel"
)

// Flag names, so every error tells the user which setting to change.
const (
	flagMode           = "--enhanced-locking-redis-mode"
	flagAddrs          = "--enhanced-locking-redis-addrs"
	flagSentinelMaster = "--enhanced-locking-redis-sentinel-master"
	flagUsername       = "--enhanced-locking-redis-username"
	flagPassword       = "--enhanced-locking-redis-password"
	flagDB             = "--enhanced-locking-redis-db"
	flagTLSEnabled     = "--enhanced-locking-redis-tls-enabled"
	flagTLSCAFile      = "--enhanced-locking-redis-tls-ca-file"
	flagPoolSize       = "--enhanced-locking-redis-pool-size"
	flagDialTimeout    = "--enhanced-locking-redis-dial-timeout"
)

// DefaultDialTimeout applies when Config.DialTimeout is zero.
const DefaultDialTimeout = 5 * time.Second

// Config describes how to reach Redis. The zero value of every field except
// Addrs is usable: Mode defaults to standalone, PoolSize to go-redis's
// default, DialTimeout to DefaultDialTimeout.
type Config struct {
	// Mode is standalone, cluster or sentinel.
	Mode string
	// Addrs are host:port pairs: the server (standalone), seed nodes
	// (cluster) or the sentinels (sentinel).
	Addrs []string
	// SentinelMaster is the master name the sentinels monitor.
	SentinelMaster string
	// Username and Password authenticate to the data nodes (ACL user when
	// Username is set, requirepass otherwise). Sentinels are reached
	// without authentication.
	Username, Password string
	// DB selects a logical database; cluster mode only has database 0.
	DB int
	// TLSEnabled dials with TLS. TLSCAFile, when set, replaces the system
	// trust store with the PEM certificates it holds.
	TLSEnabled            bool
	TLSCAFile             string
	TLSInsecureSkipVerify bool
	PoolSize              int
	DialTimeout           time.Duration
	// WaitReplicas, when positive, makes every write wait until that many
	// replicas acknowledged it (WAIT, within WaitTimeout), and fail when
	// fewer did. Redis replicates asynchronously: without it, a failover
	// may lose writes the master acknowledged. With it, a failover loses
	// one only if it promotes a replica that had not acknowledged it, which
	// Sentinel and Cluster try to avoid but do not rule out: WAIT does not
	// make Redis strongly consistent.
	WaitReplicas int
}

// String keeps the password out of logs that print the config.
func (c Config) String() string {
	pw := ""
	if c.Password != "" {
		pw = "[redacted]"
	}
	return fmt.Sprintf("{Mode:%s Addrs:%v SentinelMaster:%s Username:%s Password:%s DB:%d TLSEnabled:%t TLSCAFile:%s TLSInsecureSkipVerify:%t PoolSize:%d DialTimeout:%s WaitReplicas:%d}",
		c.mode(), c.Addrs, c.SentinelMaster, c.Username, pw, c.DB, c.TLSEnabled, c.TLSCAFile, c.TLSInsecureSkipVerify, c.PoolSize, c.DialTimeout, c.WaitReplicas)
}

// GoString covers %#v, which bypasses String.
func (c Config) GoString() string { return "redis.Config" + c.String() }

func (c Config) mode() string {
	if c.Mode == "" {
		return ModeStandalone
	}
	return c.Mode
}

func (c Config) dialTimeout() time.Duration {
	if c.DialTimeout == 0 {
		return DefaultDialTimeout
	}
	return c.DialTimeout
}

// addrs returns Addrs trimmed, without empty entries, so a trailing comma in
// a flag value is harmless.
func (c Config) addrs() []string {
	var out []string
	for _, a := range c.Addrs {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// Validate checks the config without touching the network. Each error names
// the flag, the value and the fix.
func (c Config) Validate() error {
	mode := c.mode()
	switch mode {
	case ModeStandalone, ModeCluster, ModeSentinel:
	default:
		return fmt.Errorf("%s=%q is not a known mode: use %s, %s or %s", flagMode, c.Mode, ModeStandalone, ModeCluster, ModeSentinel)
	}
	addrs := c.addrs()
	if len(addrs) == 0 {
		return fmt.Errorf("%s is empty: set it to host:port (comma-separated list of %s)", flagAddrs, addrsNoun(mode))
	}
	for _, a := range addrs {
		if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
			return fmt.Errorf("%s: %q is not host:port: write it like redis.example.com:6379", flagAddrs, a)
		}
	}
	if mode == ModeStandalone && len(addrs) > 1 {
		return fmt.Errorf("%s has %d addresses (%s) but %s=%s takes one: give one address, or set %s=%s or %s",
			flagAddrs, len(addrs), strings.Join(addrs, ","), flagMode, mode, flagMode, ModeCluster, ModeSentinel)
	}
	if mode == ModeSentinel && strings.TrimSpace(c.SentinelMaster) == "" {
		return fmt.Errorf("%s is empty but %s=%s needs it: set it to the master name the sentinels monitor (\"sentinel monitor <name> ...\" in sentinel.conf)",
			flagSentinelMaster, flagMode, ModeSentinel)
	}
	if c.DB < 0 {
		return fmt.Errorf("%s=%d is negative: use a database number from 0", flagDB, c.DB)
	}
	if mode == ModeCluster && c.DB != 0 {
		return fmt.Errorf("%s=%d but Redis Cluster only has database 0: remove %s or set it to 0", flagDB, c.DB, flagDB)
	}
	if c.PoolSize < 0 {
		return fmt.Errorf("%s=%d is negative: use 0 for the default or a positive size", flagPoolSize, c.PoolSize)
	}
	if c.WaitReplicas < 0 {
		return fmt.Errorf("%s=%d is negative: use 0 not to wait, or the number of replicas each write must reach", flagWaitReplicas, c.WaitReplicas)
	}
	if c.DialTimeout < 0 {
		return fmt.Errorf("%s=%s is negative: use a positive duration such as 5s", flagDialTimeout, c.DialTimeout)
	}
	if c.TLSCAFile != "" && !c.TLSEnabled {
		return fmt.Errorf("%s=%s is set but TLS is off: set %s=true, or remove %s", flagTLSCAFile, c.TLSCAFile, flagTLSEnabled, flagTLSCAFile)
	}
	return nil
}

func addrsNoun(mode string) string {
	switch mode {
	case ModeCluster:
		return "cluster seed nodes"
	case ModeSentinel:
		return "sentinels"
	default:
		return "one server"
	}
}

func (c Config) tlsConfig() (*tls.Config, error) {
	if !c.TLSEnabled {
		return nil, nil
	}
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: c.TLSInsecureSkipVerify, //nolint:gosec // opt-in for self-signed test setups, as upstream's --redis-insecure-skip-verify
	}
	if c.TLSCAFile == "" {
		return cfg, nil
	}
	pemBytes, err := os.ReadFile(c.TLSCAFile)
	if err != nil {
		return nil, fmt.Errorf("%s=%s cannot be read: %w: point it at a readable PEM CA certificate", flagTLSCAFile, c.TLSCAFile, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		return nil, fmt.Errorf("%s=%s holds no PEM certificate: point it at the CA certificate (-----BEGIN CERTIFICATE-----) that signed the Redis server certificate", flagTLSCAFile, c.TLSCAFile)
	}
	cfg.RootCAs = pool
	return cfg, nil
}

// NewClient validates cfg, builds the client for its mode and PINGs Redis
// within cfg.DialTimeout, so a misconfiguration fails at start-up with an
// error saying what to fix rather than at the first lock.
func NewClient(ctx context.Context, cfg Config) (redis.UniversalClient, error) {
	if err := cfg.Validate(); err != nil {
		return nil, redact(err, cfg.Password)
	}
	tlsCfg, err := cfg.tlsConfig()
	if err != nil {
		return nil, redact(err, cfg.Password)
	}
	client := newModeClient(cfg, tlsCfg)
	if cfg.WaitReplicas > 0 {
		installReplicaWait(client, cfg.WaitReplicas)
	}

	pingCtx, cancel := context.WithTimeout(ctx, cfg.dialTimeout())
	defer cancel()
	if err := client.Ping(pingCtx).Err(); err != nil {
		_ = client.Close()
		return nil, redact(classify(cfg, err), cfg.Password)
	}
	return client, nil
}

// newModeClient picks the go-redis constructor from the configured mode
// rather than letting NewUniversalClient guess from the address count.
func newModeClient(cfg Config, tlsCfg *tls.Config) redis.UniversalClient {
	// Redis 7 does not know CLIENT MAINT_NOTIFICATIONS; asking on every new
	// connection costs a round trip and a log line.
	noMaint := &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	// Without ContextTimeoutEnabled go-redis ignores context deadlines on
	// reads and waits its own 3 s ReadTimeout; lock callers and the start-up
	// ping bound their waits with contexts.
	addrs := cfg.addrs()
	switch cfg.mode() {
	case ModeCluster:
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:                    addrs,
			Username:                 cfg.Username,
			Password:                 cfg.Password,
			TLSConfig:                tlsCfg,
			PoolSize:                 cfg.PoolSize,
			DialTimeout:              cfg.dialTimeout(),
			ContextTimeoutEnabled:    true,
			MaintNotificationsConfig: noMaint,
		})
	case ModeSentinel:
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName:    cfg.SentinelMaster,
			SentinelAddrs: addrs,
			Username:      cfg.Username,
			Password:      cfg.Password,
			DB:            cfg.DB,
			TLSConfig:     tlsCfg,
			PoolSize:      cfg.PoolSize,
			DialTimeout:   cfg.dialTimeout(),
			// Failover clients have no maintenance-notification option.
			ContextTimeoutEnabled: true,
		})
	default:
		return redis.NewClient(&redis.Options{
			Addr:                     addrs[0],
			Username:                 cfg.Username,
			Password:                 cfg.Password,
			DB:                       cfg.DB,
			TLSConfig:                tlsCfg,
			PoolSize:                 cfg.PoolSize,
			DialTimeout:              cfg.dialTimeout(),
			ContextTimeoutEnabled:    true,
			MaintNotificationsConfig: noMaint,
		})
	}
}
