package cmd

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/atlantis-enhanced/atlantis/server"
)

// Enhanced locking flag names. Each is also an ATLANTIS_* env var (dashes as
// underscores, upper case) and a key of the --config file.
const (
	EnhancedLockingEnabledFlag             = "enhanced-locking-enabled"
	EnhancedLockingBackendFlag             = "enhanced-locking-backend"
	EnhancedLockingRedisModeFlag           = "enhanced-locking-redis-mode"
	EnhancedLockingRedisAddrsFlag          = "enhanced-locking-redis-addrs"
	EnhancedLockingRedisSentinelMasterFlag = "enhanced-locking-redis-sentinel-master"
	EnhancedLockingRedisUsernameFlag       = "enhanced-locking-redis-username"
	EnhancedLockingRedisPasswordFlag       = "enhanced-locking-redis-password" // nolint: gosec
	EnhancedLockingRedisDBFlag             = "enhanced-locking-redis-db"
	EnhancedLockingRedisTLSEnabledFlag     = "enhanced-locking-redis-tls-enabled"
	EnhancedLockingRedisTLSCAFileFlag      = "enhanced-locking-redis-tls-ca-file"
	EnhancedLockingRedisTLSInsecureFlag    = "enhanced-locking-redis-tls-insecure-skip-verify"
	EnhancedLockingRedisKeyPrefixFlag      = "enhanced-locking-redis-key-prefix"
	EnhancedLockingRedisPoolSizeFlag       = "enhanced-locking-redis-pool-size"
	EnhancedLockingRedisDialTimeoutFlag    = "enhanced-locking-redis-dial-timeout"
	EnhancedLockingRedisWaitReplicasFlag   = "enhanced-locking-redis-wait-replicas"
	EnhancedLockingPriorityQueueFlag       = "enhanced-locking-priority-queue"
	EnhancedLockingPriorityRulesFlag       = "enhanced-locking-priority-rules"
	EnhancedLockingQueueTimeoutFlag        = "enhanced-locking-queue-timeout"
	EnhancedLockingQueueNoticeLeaseFlag    = "enhanced-locking-queue-notice-lease"
	EnhancedLockingWaitTimeoutFlag         = "enhanced-locking-wait-timeout"
	EnhancedLockingAutoPlanFlag            = "enhanced-locking-auto-plan"
	EnhancedLockingCommandLeaseTTLFlag     = "enhanced-locking-command-lease-ttl"
	EnhancedLockingCommandWaitTimeoutFlag  = "enhanced-locking-command-wait-timeout"
	EnhancedLockingReaperFlag              = "enhanced-locking-stale-lock-reaper"
	EnhancedLockingReaperIntervalFlag      = "enhanced-locking-stale-lock-reaper-interval"
	EnhancedLockingReaperDryRunFlag        = "enhanced-locking-stale-lock-reaper-dry-run"
	EnhancedLockingReaperRateFlag          = "enhanced-locking-stale-lock-reaper-calls-per-minute"
	EnhancedLockingDeadlockDetectionFlag   = "enhanced-locking-deadlock-detection"
	EnhancedLockingDeadlockResolutionFlag  = "enhanced-locking-deadlock-resolution"
	EnhancedLockingDeadlockIntervalFlag    = "enhanced-locking-deadlock-check-interval"
	EnhancedLockingRetryFlag               = "enhanced-locking-retry"
	EnhancedLockingRetryMaxAttemptsFlag    = "enhanced-locking-retry-max-attempts"
	EnhancedLockingRetryBackoffFlag        = "enhanced-locking-retry-backoff"
	EnhancedLockingFallbackFlag            = "enhanced-locking-fallback"
	EnhancedLockingHealthCheckIntervalFlag = "enhanced-locking-health-check-interval"
)

// enhancedFlag describes one --enhanced-locking-* flag: how it is shown and how
// its raw value (from a flag, env var or config file) lands in the config.
type enhancedFlag struct {
	name        string
	description string
	isBool      bool
	// isList flags take several values: comma-separated, or a YAML list in
	// the config file.
	isList bool
	secret bool
	get    func(c server.EnhancedLockingConfig) string
	set    func(c *server.EnhancedLockingConfig, value string) error
}

// valueShape says, for an error about a value of the wrong shape, what to
// write instead.
func (f enhancedFlag) valueShape() string {
	if f.isList {
		return fmt.Sprintf("a list of values, as in %s: [a, b], or a comma-separated string", f.name)
	}
	return fmt.Sprintf("one value, as in %s: %s", f.name, f.defaultValueOr("value"))
}

// defaultValueOr is the default value, or example where it is empty.
func (f enhancedFlag) defaultValueOr(example string) string {
	if d := f.defaultValue(); d != "" {
		return d
	}
	return example
}

// defaultValue is the value the flag has when the user sets nothing.
func (f enhancedFlag) defaultValue() string {
	return f.get(server.DefaultEnhancedLockingConfig())
}

// enhancedFlags is ordered as the help output shows it.
var enhancedFlags = []enhancedFlag{
	{
		name:        EnhancedLockingEnabledFlag,
		description: "Route project and apply locks through enhanced locking. The env var DISABLE_ENHANCED_LOCKING=true overrides this at start-up.",
		get:         func(c server.EnhancedLockingConfig) string { return strconv.FormatBool(c.Enabled) },
		isBool:      true,
		set:         boolSetter(func(c *server.EnhancedLockingConfig, v bool) { c.Enabled = v }),
	},
	{
		name:        EnhancedLockingBackendFlag,
		description: "Where enhanced locks live: boltdb (one replica, inside the Atlantis data dir) or redis (shared by every replica).",
		get:         func(c server.EnhancedLockingConfig) string { return c.Backend },
		set: oneOfSetter([]string{server.BackendBoltDB, server.BackendRedis},
			func(c *server.EnhancedLockingConfig, v string) { c.Backend = v }),
	},
	{
		name:        EnhancedLockingRedisModeFlag,
		description: "Redis topology: standalone, cluster or sentinel.",
		get:         func(c server.EnhancedLockingConfig) string { return c.Redis.Mode },
		set: oneOfSetter([]string{server.RedisModeStandalone, server.RedisModeCluster, server.RedisModeSentinel},
			func(c *server.EnhancedLockingConfig, v string) { c.Redis.Mode = v }),
	},
	{
		name:        EnhancedLockingRedisAddrsFlag,
		description: "Comma-separated host:port list: the server (standalone), any cluster nodes (cluster) or the sentinels (sentinel).",
		get:         func(c server.EnhancedLockingConfig) string { return strings.Join(c.Redis.Addrs, ",") },
		isList:      true,
		set:         setRedisAddrs,
	},
	{
		name:        EnhancedLockingRedisSentinelMasterFlag,
		description: "Name of the master the sentinels watch; required in sentinel mode.",
		get:         func(c server.EnhancedLockingConfig) string { return c.Redis.SentinelMaster },
		set:         stringSetter(func(c *server.EnhancedLockingConfig, v string) { c.Redis.SentinelMaster = v }),
	},
	{
		name:        EnhancedLockingRedisUsernameFlag,
		description: "Redis ACL username; leave empty for the default user.",
		get:         func(c server.EnhancedLockingConfig) string { return c.Redis.Username },
		set:         stringSetter(func(c *server.EnhancedLockingConfig, v string) { c.Redis.Username = v }),
	},
	{
		name:        EnhancedLockingRedisPasswordFlag,
		description: "Redis password (of the ACL user when a username is set). Prefer the env var ATLANTIS_ENHANCED_LOCKING_REDIS_PASSWORD.",
		get:         func(c server.EnhancedLockingConfig) string { return c.Redis.Password },
		secret:      true,
		set:         stringSetter(func(c *server.EnhancedLockingConfig, v string) { c.Redis.Password = v }),
	},
	{
		name:        EnhancedLockingRedisDBFlag,
		description: "Redis database number (standalone and sentinel only; cluster has only database 0).",
		get:         func(c server.EnhancedLockingConfig) string { return strconv.Itoa(c.Redis.DB) },
		set:         intSetter(0, "a database number of 0 or more", func(c *server.EnhancedLockingConfig, v int) { c.Redis.DB = v }),
	},
	{
		name:        EnhancedLockingRedisTLSEnabledFlag,
		description: "Connect to Redis over TLS.",
		get:         func(c server.EnhancedLockingConfig) string { return strconv.FormatBool(c.Redis.TLSEnabled) },
		isBool:      true,
		set:         boolSetter(func(c *server.EnhancedLockingConfig, v bool) { c.Redis.TLSEnabled = v }),
	},
	{
		name:        EnhancedLockingRedisTLSCAFileFlag,
		description: "PEM file of the CA that signed the Redis server certificate; empty trusts the system roots.",
		get:         func(c server.EnhancedLockingConfig) string { return c.Redis.TLSCAFile },
		set:         stringSetter(func(c *server.EnhancedLockingConfig, v string) { c.Redis.TLSCAFile = v }),
	},
	{
		name:        EnhancedLockingRedisTLSInsecureFlag,
		description: "Skip verification of the Redis server certificate. Only for testing: anyone on the network path can then read and forge locks.",
		get:         func(c server.EnhancedLockingConfig) string { return strconv.FormatBool(c.Redis.TLSInsecureSkipVerify) },
		isBool:      true,
		set:         boolSetter(func(c *server.EnhancedLockingConfig, v bool) { c.Redis.TLSInsecureSkipVerify = v }),
	},
	{
		name:        EnhancedLockingRedisKeyPrefixFlag,
		description: "Prefix for every Redis key. Leave empty to share locks with upstream Atlantis replicas on the same Redis.",
		get:         func(c server.EnhancedLockingConfig) string { return c.Redis.KeyPrefix },
		set:         stringSetter(func(c *server.EnhancedLockingConfig, v string) { c.Redis.KeyPrefix = v }),
	},
	{
		name:        EnhancedLockingRedisPoolSizeFlag,
		description: "Maximum Redis connections per node.",
		get:         func(c server.EnhancedLockingConfig) string { return strconv.Itoa(c.Redis.PoolSize) },
		set:         intSetter(1, "a pool size of 1 or more", func(c *server.EnhancedLockingConfig, v int) { c.Redis.PoolSize = v }),
	},
	{
		name:        EnhancedLockingRedisDialTimeoutFlag,
		description: "How long to wait for a Redis connection, as a Go duration such as 5s.",
		get:         func(c server.EnhancedLockingConfig) string { return c.Redis.DialTimeout.String() },
		set:         durationSetter(true, func(c *server.EnhancedLockingConfig, v time.Duration) { c.Redis.DialTimeout = v }),
	},
	{
		name: EnhancedLockingRedisWaitReplicasFlag,
		description: "How many replicas each Redis write must reach before it counts as done: every lock, queue and lease write then waits (WAIT, up to 1s) for that many replicas to acknowledge it, and fails closed, reported as not done, when fewer do (a replica down or lagging). " +
			"Set it where sentinel or cluster replicas take over from a failed master: replication is asynchronous, so without it a failover can lose a lock the master acknowledged and grant it again. " +
			"It narrows that window but does not make Redis strongly consistent: a failover can still promote a replica that missed an acknowledged write, and a write reported failed may still take effect (see Redis's WAIT documentation and Jepsen's Redis analyses). 0 does not wait.",
		get: func(c server.EnhancedLockingConfig) string { return strconv.Itoa(c.Redis.WaitReplicas) },
		set: intSetter(0, "0 or more replicas", func(c *server.EnhancedLockingConfig, v int) { c.Redis.WaitReplicas = v }),
	},
	{
		name:        EnhancedLockingPriorityQueueFlag,
		description: "Queue the plans that find a project locked by another pull: the lock passes to the queue's head on release, by priority then arrival, with a PR comment.",
		get:         func(c server.EnhancedLockingConfig) string { return strconv.FormatBool(c.Features.PriorityQueue) },
		isBool:      true,
		set:         boolSetter(func(c *server.EnhancedLockingConfig, v bool) { c.Features.PriorityQueue = v }),
	},
	{
		name:        EnhancedLockingPriorityRulesFlag,
		description: "YAML file of rules giving queued pulls a priority (critical, high, normal, low) by repo, dir, workspace, project name or head branch, and the aging step; needs the priority queue.",
		get:         func(c server.EnhancedLockingConfig) string { return c.Features.PriorityRulesFile },
		set:         stringSetter(func(c *server.EnhancedLockingConfig, v string) { c.Features.PriorityRulesFile = v }),
	},
	{
		name:        EnhancedLockingQueueTimeoutFlag,
		description: "How long a queued pull waits for a lock before its entry expires, as a Go duration.",
		get:         func(c server.EnhancedLockingConfig) string { return c.Features.QueueTimeout.String() },
		set:         durationSetter(true, func(c *server.EnhancedLockingConfig, v time.Duration) { c.Features.QueueTimeout = v }),
	},
	{
		name:        EnhancedLockingQueueNoticeLeaseFlag,
		description: "How long a lock hand-over or expiry to announce stays one replica's before another may take it over, renewed right before each comment: a replica that dies meanwhile delays the announcement this long at most; shorter than one comment call, the comment may be posted twice.",
		get:         func(c server.EnhancedLockingConfig) string { return c.Features.QueueNoticeLease.String() },
		set:         durationSetter(true, func(c *server.EnhancedLockingConfig, v time.Duration) { c.Features.QueueNoticeLease = v }),
	},
	{
		name:        EnhancedLockingWaitTimeoutFlag,
		description: "How long a lock request held by another pull waits for a release before answering; 0s answers at once like upstream.",
		get:         func(c server.EnhancedLockingConfig) string { return c.Features.WaitTimeout.String() },
		set:         durationSetter(false, func(c *server.EnhancedLockingConfig, v time.Duration) { c.Features.WaitTimeout = v }),
	},
	{
		name:        EnhancedLockingAutoPlanFlag,
		description: "Re-run the plan of the pull a freed lock is handed to, on its current head commit; needs the priority queue.",
		get:         func(c server.EnhancedLockingConfig) string { return strconv.FormatBool(c.Features.AutoPlan) },
		isBool:      true,
		set:         boolSetter(func(c *server.EnhancedLockingConfig, v bool) { c.Features.AutoPlan = v }),
	},
	{
		name:        EnhancedLockingCommandLeaseTTLFlag,
		description: "How long a pull request's command lease outlives its last renewal: a replica that dies while it runs a command for a pull holds the pull's next command back this long (plus a quarter second) at most; renewed every third of it.",
		get:         func(c server.EnhancedLockingConfig) string { return c.Features.CommandLeaseTTL.String() },
		set:         durationSetter(true, func(c *server.EnhancedLockingConfig, v time.Duration) { c.Features.CommandLeaseTTL = v }),
	},
	{
		name:        EnhancedLockingCommandWaitTimeoutFlag,
		description: "How long a command waits for another command of the same pull request, on any replica, to finish before it gives up with a PR comment.",
		get:         func(c server.EnhancedLockingConfig) string { return c.Features.CommandWaitTimeout.String() },
		set:         durationSetter(true, func(c *server.EnhancedLockingConfig, v time.Duration) { c.Features.CommandWaitTimeout = v }),
	},
	{
		name:        EnhancedLockingReaperFlag,
		description: "Periodically ask the VCS about every pull request holding a lock or a queue entry, and release those of closed or merged pull requests whose webhook was missed.",
		get:         func(c server.EnhancedLockingConfig) string { return strconv.FormatBool(c.Features.StaleLockReaper) },
		isBool:      true,
		set:         boolSetter(func(c *server.EnhancedLockingConfig, v bool) { c.Features.StaleLockReaper = v }),
	},
	{
		name:        EnhancedLockingReaperIntervalFlag,
		description: "How often the stale-lock reaper checks, as a Go duration.",
		get:         func(c server.EnhancedLockingConfig) string { return c.Features.StaleLockReaperInterval.String() },
		set:         durationSetter(true, func(c *server.EnhancedLockingConfig, v time.Duration) { c.Features.StaleLockReaperInterval = v }),
	},
	{
		name:        EnhancedLockingReaperDryRunFlag,
		description: "Have the stale-lock reaper only log (and count) the locks it would release.",
		get: func(c server.EnhancedLockingConfig) string {
			return strconv.FormatBool(c.Features.StaleLockReaperDryRun)
		},
		isBool: true,
		set:    boolSetter(func(c *server.EnhancedLockingConfig, v bool) { c.Features.StaleLockReaperDryRun = v }),
	},
	{
		name:        EnhancedLockingReaperRateFlag,
		description: "The most VCS API calls the stale-lock reaper makes a minute (one per pull request checked), across the fleet: one replica reaps at a time.",
		get: func(c server.EnhancedLockingConfig) string {
			return strconv.Itoa(c.Features.StaleLockReaperCallsPerMinute)
		},
		set: intSetter(1, "1 or more calls a minute", func(c *server.EnhancedLockingConfig, v int) {
			c.Features.StaleLockReaperCallsPerMinute = v
		}),
	},
	{
		name:        EnhancedLockingDeadlockDetectionFlag,
		description: "Find pulls that wait in lock queues for each other's locks forever, when a pull queues and at every check interval, and resolve them as --enhanced-locking-deadlock-resolution says; needs the priority queue.",
		get:         func(c server.EnhancedLockingConfig) string { return strconv.FormatBool(c.Features.DeadlockDetection) },
		isBool:      true,
		set:         boolSetter(func(c *server.EnhancedLockingConfig, v bool) { c.Features.DeadlockDetection = v }),
	},
	{
		name:        EnhancedLockingDeadlockResolutionFlag,
		description: "What to do with a deadlock: notify (comment on each of its pulls, naming the locks and what each can do) or release-victim (take the lowest-priority, then youngest, pull out of its queues and free its locks the others wait for, with a comment on each pull).",
		get:         func(c server.EnhancedLockingConfig) string { return c.Features.DeadlockResolution },
		set: oneOfSetter([]string{server.DeadlockResolutionNotify, server.DeadlockResolutionReleaseVictim},
			func(c *server.EnhancedLockingConfig, v string) { c.Features.DeadlockResolution = v }),
	},
	{
		name:        EnhancedLockingDeadlockIntervalFlag,
		description: "How often each replica checks every lock queue for deadlocks, besides whenever a pull queues, as a Go duration.",
		get:         func(c server.EnhancedLockingConfig) string { return c.Features.DeadlockCheckInterval.String() },
		set:         durationSetter(true, func(c *server.EnhancedLockingConfig, v time.Duration) { c.Features.DeadlockCheckInterval = v }),
	},
	{
		name:        EnhancedLockingRetryFlag,
		description: "Retry lock operations that failed because the backend was briefly unreachable.",
		get:         func(c server.EnhancedLockingConfig) string { return strconv.FormatBool(c.Features.RetryMechanism) },
		isBool:      true,
		set:         boolSetter(func(c *server.EnhancedLockingConfig, v bool) { c.Features.RetryMechanism = v }),
	},
	{
		name:        EnhancedLockingRetryMaxAttemptsFlag,
		description: "Attempts per lock operation when retry is on, the first included.",
		get:         func(c server.EnhancedLockingConfig) string { return strconv.Itoa(c.Features.RetryMaxAttempts) },
		set:         intSetter(1, "1 or more attempts", func(c *server.EnhancedLockingConfig, v int) { c.Features.RetryMaxAttempts = v }),
	},
	{
		name:        EnhancedLockingRetryBackoffFlag,
		description: "Pause before the first retry, doubled for each next one, as a Go duration.",
		get:         func(c server.EnhancedLockingConfig) string { return c.Features.RetryBackoff.String() },
		set:         durationSetter(true, func(c *server.EnhancedLockingConfig, v time.Duration) { c.Features.RetryBackoff = v }),
	},
	{
		name:        EnhancedLockingFallbackFlag,
		description: "While Redis is unreachable: none (lock requests fail, safe for any number of replicas) or boltdb (use the local database; safe for ONE replica only).",
		get:         func(c server.EnhancedLockingConfig) string { return c.Fallback.Mode },
		set: oneOfSetter([]string{server.FallbackNone, server.FallbackBoltDB},
			func(c *server.EnhancedLockingConfig, v string) { c.Fallback.Mode = v }),
	},
	{
		name:        EnhancedLockingHealthCheckIntervalFlag,
		description: "How often the backend is pinged to decide its health, as a Go duration.",
		get:         func(c server.EnhancedLockingConfig) string { return c.Performance.HealthCheckInterval.String() },
		set:         durationSetter(true, func(c *server.EnhancedLockingConfig, v time.Duration) { c.Performance.HealthCheckInterval = v }),
	},
}

func stringSetter(f func(*server.EnhancedLockingConfig, string)) func(*server.EnhancedLockingConfig, string) error {
	return func(c *server.EnhancedLockingConfig, v string) error {
		f(c, v)
		return nil
	}
}

func boolSetter(f func(*server.EnhancedLockingConfig, bool)) func(*server.EnhancedLockingConfig, string) error {
	return func(c *server.EnhancedLockingConfig, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("use true or false")
		}
		f(c, b)
		return nil
	}
}

func intSetter(minimum int, want string, f func(*server.EnhancedLockingConfig, int)) func(*server.EnhancedLockingConfig, string) error {
	return func(c *server.EnhancedLockingConfig, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < minimum {
			return fmt.Errorf("use a whole number: %s", want)
		}
		f(c, n)
		return nil
	}
}

func durationSetter(positive bool, f func(*server.EnhancedLockingConfig, time.Duration)) func(*server.EnhancedLockingConfig, string) error {
	return func(c *server.EnhancedLockingConfig, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("use a Go duration such as 500ms, 30s or 2h")
		}
		if positive && d <= 0 {
			return fmt.Errorf("use a duration greater than zero, such as 30s")
		}
		if d < 0 {
			return fmt.Errorf("use a duration of zero or more, such as 0s or 30s")
		}
		f(c, d)
		return nil
	}
}

func oneOfSetter(allowed []string, f func(*server.EnhancedLockingConfig, string)) func(*server.EnhancedLockingConfig, string) error {
	return func(c *server.EnhancedLockingConfig, v string) error {
		for _, a := range allowed {
			if v == a {
				f(c, v)
				return nil
			}
		}
		return fmt.Errorf("use one of %s", strings.Join(allowed, ", "))
	}
}

func setRedisAddrs(c *server.EnhancedLockingConfig, v string) error {
	c.Redis.Addrs = nil
	if v == "" {
		return nil
	}
	for addr := range strings.SplitSeq(v, ",") {
		addr = strings.TrimSpace(addr)
		host, port, err := net.SplitHostPort(addr)
		if err != nil || host == "" {
			return fmt.Errorf("use comma-separated host:port pairs such as redis-0:6379,redis-1:6379")
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return fmt.Errorf("port of %q must be a number from 1 to 65535", addr)
		}
		c.Redis.Addrs = append(c.Redis.Addrs, addr)
	}
	return nil
}

// killSwitchEnv, set to true, forces the legacy path whatever the config says,
// so operators can roll back without editing the config.
const killSwitchEnv = "DISABLE_ENHANCED_LOCKING"

func killSwitchOn() (bool, error) {
	raw, ok := os.LookupEnv(killSwitchEnv)
	if !ok || strings.TrimSpace(raw) == "" {
		return false, nil
	}
	on, err := strconv.ParseBool(strings.TrimSpace(raw))
	if err != nil {
		return false, fmt.Errorf("invalid %s %q: use true or false", killSwitchEnv, raw)
	}
	return on, nil
}
