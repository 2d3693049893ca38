package cmd

import (
	"fmt"
	"os"
	"strings"
	"time"

	upstreamcmd "github.com/runatlantis/atlantis/cmd"
	"github.com/spf13/viper"

	"github.com/atlantis-enhanced/atlantis/server"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/commandlease"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/queue"
)

// minCommandLeaseTTL is the shortest --enhanced-locking-command-lease-ttl.
const minCommandLeaseTTL = time.Second

// minQueueNoticeLease is the shortest --enhanced-locking-queue-notice-lease.
const minQueueNoticeLease = time.Second

// enhancedLockingConfig reads every --enhanced-locking-* value from v (flag >
// env > config file > default) and checks that they make sense together.
func enhancedLockingConfig(v *viper.Viper) (server.EnhancedLockingConfig, error) {
	lockingDBType := v.GetString(upstreamcmd.LockingDBType)
	if lockingDBType == "" {
		lockingDBType = upstreamcmd.DefaultLockingDBType
	}
	cfg := server.DefaultEnhancedLockingConfig()
	for _, f := range enhancedFlags {
		raw, err := viperString(v, f)
		if err != nil {
			return cfg, fmt.Errorf("invalid --%s in the config file: %w", f.name, err)
		}
		// A secret is used as given: a password may end in a space.
		if !f.secret {
			raw = strings.TrimSpace(raw)
		}
		if raw == "" {
			raw = f.defaultValue()
		}
		if err := f.set(&cfg, raw); err != nil {
			shown := raw
			if f.secret {
				shown = "<redacted>"
			}
			return cfg, fmt.Errorf("invalid --%s %q: %w", f.name, shown, err)
		}
	}
	return cfg, validateEnhancedLocking(cfg, lockingDBType)
}

// viperString reads f's value as the string a flag would give. A config file
// may hold a list flag (the Redis addresses) as a YAML list of values. Any
// other list, and any mapping, is refused: viper would read a mapping as ""
// (the default) and the list of a one-value flag would be joined with commas.
// The message never shows the value, which may be a secret.
func viperString(v *viper.Viper, f enhancedFlag) (string, error) {
	switch value := v.Get(f.name).(type) {
	case map[string]any:
		return "", fmt.Errorf("it is a mapping (key: value pairs): give %s", f.valueShape())
	case []any:
		if !f.isList {
			return "", fmt.Errorf("it is a list: give %s", f.valueShape())
		}
		items := make([]string, 0, len(value))
		for _, item := range value {
			switch item.(type) {
			case map[string]any, []any:
				return "", fmt.Errorf("an item of the list is not a single value: give %s", f.valueShape())
			}
			items = append(items, fmt.Sprint(item))
		}
		return strings.Join(items, ","), nil
	}
	return v.GetString(f.name), nil
}

// validateEnhancedLocking checks what no single flag can: combinations, and
// files that must exist. It only insists on Redis settings when enhanced
// locking will actually use Redis.
func validateEnhancedLocking(c server.EnhancedLockingConfig, lockingDBType string) error {
	if err := backends.ValidateKeyPrefix(c.Redis.KeyPrefix); err != nil {
		return fmt.Errorf("invalid --%s: %w", EnhancedLockingRedisKeyPrefixFlag, err)
	}
	if c.Redis.TLSCAFile != "" {
		if err := readableFile(c.Redis.TLSCAFile); err != nil {
			return fmt.Errorf("invalid --%s %q: %w: give the path of a readable PEM file", EnhancedLockingRedisTLSCAFileFlag, c.Redis.TLSCAFile, err)
		}
		if !c.Redis.TLSEnabled {
			return fmt.Errorf("--%s is set but --%s is false: add --%s=true or drop the CA file", EnhancedLockingRedisTLSCAFileFlag, EnhancedLockingRedisTLSEnabledFlag, EnhancedLockingRedisTLSEnabledFlag)
		}
	}
	if c.Redis.TLSInsecureSkipVerify && !c.Redis.TLSEnabled {
		return fmt.Errorf("--%s needs --%s=true: add it, or drop --%s", EnhancedLockingRedisTLSInsecureFlag, EnhancedLockingRedisTLSEnabledFlag, EnhancedLockingRedisTLSInsecureFlag)
	}
	if c.Features.PriorityRulesFile != "" {
		if err := readableFile(c.Features.PriorityRulesFile); err != nil {
			return fmt.Errorf("invalid --%s %q: %w: give the path of a readable YAML file", EnhancedLockingPriorityRulesFlag, c.Features.PriorityRulesFile, err)
		}
		if _, err := queue.LoadRules(c.Features.PriorityRulesFile); err != nil {
			return fmt.Errorf("invalid --%s: %w", EnhancedLockingPriorityRulesFlag, err)
		}
	}
	// Renewed every third of the TTL over a network round trip: below a
	// second, one slow round trip loses a healthy command's lease.
	if c.Features.CommandLeaseTTL < minCommandLeaseTTL {
		return fmt.Errorf("invalid --%s %s: use %s or more, such as the default %s", EnhancedLockingCommandLeaseTTLFlag, c.Features.CommandLeaseTTL, minCommandLeaseTTL, commandlease.DefaultTTL)
	}
	if c.Features.StaleLockReaperDryRun && !c.Features.StaleLockReaper {
		return fmt.Errorf("--%s only applies to the stale-lock reaper: add --%s=true or drop it", EnhancedLockingReaperDryRunFlag, EnhancedLockingReaperFlag)
	}
	// A delivery is a comment or two over the network; a lease below a
	// second runs out during most of them, and another replica posts the
	// same comment again.
	if c.Features.QueueNoticeLease < minQueueNoticeLease {
		return fmt.Errorf("invalid --%s %s: use %s or more, such as the default %s", EnhancedLockingQueueNoticeLeaseFlag, c.Features.QueueNoticeLease, minQueueNoticeLease, queue.DefaultNoticeLease)
	}
	if c.Enabled && !c.Features.PriorityQueue {
		for _, f := range []struct {
			set  bool
			flag string
		}{
			{c.Features.AutoPlan, EnhancedLockingAutoPlanFlag},
			{c.Features.PriorityRulesFile != "", EnhancedLockingPriorityRulesFlag},
			// Deadlocks are pulls waiting in durable queues: without them
			// there is nothing to detect.
			{c.Features.DeadlockDetection, EnhancedLockingDeadlockDetectionFlag},
		} {
			if f.set {
				return fmt.Errorf("--%s only applies to the priority queue: add --%s=true or drop it", f.flag, EnhancedLockingPriorityQueueFlag)
			}
		}
	}
	if err := validateDeadlockFlags(c); err != nil {
		return err
	}
	// The BoltDB backend and the BoltDB fallback run on the database upstream
	// opened; if that is upstream's Redis, "boltdb" would silently be
	// non-atomic Redis, possibly the very Redis that is down.
	if c.Enabled && (c.Backend == server.BackendBoltDB || c.Fallback.Mode == server.FallbackBoltDB) && lockingDBType != "boltdb" {
		if c.Backend == server.BackendBoltDB {
			return fmt.Errorf("--%s=%s needs --%s=boltdb, but it is %s: set --%s=boltdb, or use --%s=redis", EnhancedLockingBackendFlag, c.Backend, upstreamcmd.LockingDBType, lockingDBType, upstreamcmd.LockingDBType, EnhancedLockingBackendFlag)
		}
		return fmt.Errorf("--%s=%s needs --%s=boltdb, but it is %s: set --%s=boltdb, or use --%s=none", EnhancedLockingFallbackFlag, c.Fallback.Mode, upstreamcmd.LockingDBType, lockingDBType, upstreamcmd.LockingDBType, EnhancedLockingFallbackFlag)
	}
	if !c.Enabled || c.Backend != server.BackendRedis {
		if c.Fallback.Mode != server.FallbackNone && c.Enabled {
			return fmt.Errorf("--%s=%s only applies to --%s=%s: drop it or switch the backend", EnhancedLockingFallbackFlag, c.Fallback.Mode, EnhancedLockingBackendFlag, server.BackendRedis)
		}
		return nil
	}
	if len(c.Redis.Addrs) == 0 {
		return fmt.Errorf("--%s=%s needs --%s: set it to the Redis host:port list", EnhancedLockingBackendFlag, server.BackendRedis, EnhancedLockingRedisAddrsFlag)
	}
	switch c.Redis.Mode {
	case server.RedisModeSentinel:
		if c.Redis.SentinelMaster == "" {
			return fmt.Errorf("--%s=%s needs --%s: set it to the master name the sentinels monitor", EnhancedLockingRedisModeFlag, server.RedisModeSentinel, EnhancedLockingRedisSentinelMasterFlag)
		}
	case server.RedisModeCluster:
		if c.Redis.DB != 0 {
			return fmt.Errorf("invalid --%s %d: Redis Cluster only has database 0; drop the flag", EnhancedLockingRedisDBFlag, c.Redis.DB)
		}
	case server.RedisModeStandalone:
		if len(c.Redis.Addrs) > 1 {
			return fmt.Errorf("--%s=%s takes one address, got %d: use --%s=cluster or sentinel for several", EnhancedLockingRedisModeFlag, server.RedisModeStandalone, len(c.Redis.Addrs), EnhancedLockingRedisModeFlag)
		}
	}
	if c.Redis.SentinelMaster != "" && c.Redis.Mode != server.RedisModeSentinel {
		return fmt.Errorf("--%s is set but --%s is %s: add --%s=sentinel or drop the master name", EnhancedLockingRedisSentinelMasterFlag, EnhancedLockingRedisModeFlag, c.Redis.Mode, EnhancedLockingRedisModeFlag)
	}
	return nil
}

// validateDeadlockFlags refuses deadlock settings that would change nothing:
// a resolution or interval other than the default without detection on.
func validateDeadlockFlags(c server.EnhancedLockingConfig) error {
	if !c.Enabled || c.Features.DeadlockDetection {
		return nil
	}
	defaults := server.DefaultEnhancedLockingConfig().Features
	for _, f := range []struct {
		set  bool
		flag string
	}{
		{c.Features.DeadlockResolution != defaults.DeadlockResolution, EnhancedLockingDeadlockResolutionFlag},
		{c.Features.DeadlockCheckInterval != defaults.DeadlockCheckInterval, EnhancedLockingDeadlockIntervalFlag},
	} {
		if f.set {
			return fmt.Errorf("--%s only applies to deadlock detection: add --%s=true (with --%s=true) or drop it",
				f.flag, EnhancedLockingDeadlockDetectionFlag, EnhancedLockingPriorityQueueFlag)
		}
	}
	return nil
}

func readableFile(path string) error {
	f, err := os.Open(path) // nolint: gosec
	if err != nil {
		return fmt.Errorf("cannot read it (%v)", underlying(err))
	}
	defer f.Close() // nolint: errcheck
	info, err := f.Stat()
	if err != nil {
		return fmt.Errorf("cannot read it (%v)", underlying(err))
	}
	if info.IsDir() {
		return fmt.Errorf("it is a directory")
	}
	return nil
}

// underlying drops the path that os errors repeat, since the message already
// names the file.
func underlying(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}
