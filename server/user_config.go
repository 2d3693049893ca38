package server

import (
	"time"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/commandlease"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/queue"
)

// Values of EnhancedLockingConfig.Backend.
const (
	BackendBoltDB = "boltdb"
	BackendRedis  = "redis"
)

// Values of RedisLockingConfig.Mode.
const (
	RedisModeStandalone = "standalone"
	RedisModeCluster    = "cluster"
	RedisModeSentinel   = "sentinel"
)

// Values of FallbackConfig.Mode.
const (
	FallbackNone   = "none"
	FallbackBoltDB = "boltdb"
)

// Values of LockingFeaturesConfig.DeadlockResolution.
const (
	DeadlockResolutionNotify        = "notify"
	DeadlockResolutionReleaseVictim = "release-victim"
)

// EnhancedLockingConfig is the user's configuration of enhanced locking. It
// comes from the --enhanced-locking-* flags, their ATLANTIS_ENHANCED_LOCKING_*
// env vars or the same keys in the --config file, with upstream's precedence.
type EnhancedLockingConfig struct {
	Enabled     bool
	Backend     string
	Redis       RedisLockingConfig
	Features    LockingFeaturesConfig
	Fallback    FallbackConfig
	Performance PerformanceConfig
}

// RedisLockingConfig is how to reach the Redis that holds the locks.
type RedisLockingConfig struct {
	Mode                  string
	Addrs                 []string
	SentinelMaster        string
	Username              string
	Password              string
	DB                    int
	TLSEnabled            bool
	TLSCAFile             string
	TLSInsecureSkipVerify bool
	// KeyPrefix, when set, namespaces every key; it also separates the locks
	// from upstream replicas sharing the Redis, which then no longer exclude
	// each other.
	KeyPrefix   string
	PoolSize    int
	DialTimeout time.Duration
	// WaitReplicas is how many replicas each write must reach before it
	// counts as done (see redis.Config.WaitReplicas); 0 does not wait.
	WaitReplicas int
}

// LockingFeaturesConfig switches the features built on top of the backend.
type LockingFeaturesConfig struct {
	PriorityQueue      bool
	PriorityRulesFile  string
	QueueTimeout       time.Duration
	WaitTimeout        time.Duration
	AutoPlan           bool
	DeadlockDetection  bool
	DeadlockResolution string
	RetryMechanism     bool
	RetryMaxAttempts   int
	RetryBackoff       time.Duration
	// QueueNoticeLease is how long a replica that claimed a queue notice has
	// to deliver it before another replica takes it over
	// (queue.WorkerOptions.Lease).
	QueueNoticeLease time.Duration
	// DeadlockCheckInterval is how often each replica checks the queues for
	// deadlocks besides when a pull queues.
	DeadlockCheckInterval time.Duration
	// CommandLeaseTTL is how long a pull's command lease outlives its last
	// renewal (commandlease.Options.TTL).
	CommandLeaseTTL time.Duration
	// CommandWaitTimeout bounds how long a command waits for another command
	// of its pull to finish.
	CommandWaitTimeout time.Duration
	// StaleLockReaper releases the locks and queue entries of closed or
	// merged pulls every StaleLockReaperInterval, asking the VCS at most
	// StaleLockReaperCallsPerMinute times a minute; with
	// StaleLockReaperDryRun it only logs what it would release.
	StaleLockReaper               bool
	StaleLockReaperInterval       time.Duration
	StaleLockReaperDryRun         bool
	StaleLockReaperCallsPerMinute int
}

// FallbackConfig says what to do while the enhanced backend is unreachable.
type FallbackConfig struct {
	Mode string
}

// PerformanceConfig holds tuning that does not change behaviour.
type PerformanceConfig struct {
	HealthCheckInterval time.Duration
}

// DefaultEnhancedLockingConfig returns the configuration used when the user
// sets nothing: enhanced locking off, so the binary behaves like upstream.
func DefaultEnhancedLockingConfig() EnhancedLockingConfig {
	return EnhancedLockingConfig{
		Enabled: false,
		Backend: BackendBoltDB,
		Redis: RedisLockingConfig{
			Mode:        RedisModeStandalone,
			PoolSize:    20,
			DialTimeout: 5 * time.Second,
		},
		Features: LockingFeaturesConfig{
			QueueTimeout:                  24 * time.Hour,
			QueueNoticeLease:              queue.DefaultNoticeLease,
			DeadlockResolution:            DeadlockResolutionNotify,
			DeadlockCheckInterval:         time.Minute,
			RetryMaxAttempts:              3,
			RetryBackoff:                  200 * time.Millisecond,
			CommandLeaseTTL:               commandlease.DefaultTTL,
			CommandWaitTimeout:            commandlease.DefaultWaitTimeout,
			StaleLockReaperInterval:       time.Hour,
			StaleLockReaperCallsPerMinute: 60,
		},
		Fallback:    FallbackConfig{Mode: FallbackNone},
		Performance: PerformanceConfig{HealthCheckInterval: 10 * time.Second},
	}
}
