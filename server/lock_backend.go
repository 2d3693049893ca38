package server

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	upstream "github.com/runatlantis/atlantis/server"
	"github.com/runatlantis/atlantis/server/logging"
	tally "github.com/uber-go/tally/v4"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/legacydb"
	redisclient "github.com/atlantis-enhanced/atlantis/server/core/redis"
)

type healthReport = redisclient.HealthReport

// lockBackend is the enhanced backend chosen by the config, with what the
// server needs to know about it.
type lockBackend struct {
	enhanced.Backend
	// client and health are Redis's; nil for the BoltDB backend, which lives
	// in-process.
	client redis.UniversalClient
	health *redisclient.HealthChecker
	// separateFromLegacy is true when the backend keeps locks apart from the
	// legacy database, which then gets a copy of each change; sharedWithLegacy
	// when upstream's Redis database reads the backend's own keys.
	separateFromLegacy bool
	sharedWithLegacy   bool
	describe           string
}

func newLockBackend(cfg EnhancedLockingConfig, userConfig upstream.UserConfig, legacy *legacydb.Guarded, logger logging.SimpleLogging, scope tally.Scope) (*lockBackend, error) {
	switch cfg.Backend {
	case BackendBoltDB:
		return &lockBackend{
			Backend:  backends.NewBoltDB(legacy, logger),
			describe: "boltdb (in-process, one replica)",
		}, nil
	case BackendRedis:
		r := cfg.Redis
		ctx, cancel := context.WithTimeout(context.Background(), r.DialTimeout)
		defer cancel()
		client, err := redisclient.NewClient(ctx, r.clientConfig())
		if err != nil {
			return nil, fmt.Errorf("enhanced locking: %w", err)
		}
		if err := backends.ValidateKeyPrefix(r.KeyPrefix); err != nil {
			client.Close() // nolint: errcheck
			return nil, fmt.Errorf("invalid --enhanced-locking-redis-key-prefix: %w", err)
		}
		shared, err := sharesLegacyLocks(ctx, client, r.KeyPrefix, userConfig.LockingDBType, legacy)
		if err != nil {
			client.Close() // nolint: errcheck
			return nil, fmt.Errorf("enhanced locking: %w", err)
		}
		backend, err := backends.NewRedis(client, backends.RedisOptions{
			KeyPrefix: r.KeyPrefix,
			Logger:    logger,
			Scope:     scope,
			// Upstream's database on our keys is the legacy store: nothing is
			// ever imported, so release times would serve nothing.
			NoReleaseTimes: shared,
		})
		if err != nil {
			client.Close() // nolint: errcheck
			return nil, fmt.Errorf("enhanced locking: %w", err)
		}
		return &lockBackend{
			Backend:            backend,
			client:             client,
			health:             redisclient.NewHealthChecker(client, cfg.Performance.HealthCheckInterval, 0, scope),
			separateFromLegacy: !shared,
			sharedWithLegacy:   shared,
			describe:           fmt.Sprintf("redis (%s, %s)", r.Mode, strings.Join(r.Addrs, ",")),
		}, nil
	default:
		return nil, fmt.Errorf("unknown enhanced locking backend %q: use boltdb or redis", cfg.Backend)
	}
}

// clientConfig is how to reach this Redis.
func (r RedisLockingConfig) clientConfig() redisclient.Config {
	return redisclient.Config{
		Mode:                  r.Mode,
		Addrs:                 r.Addrs,
		SentinelMaster:        r.SentinelMaster,
		Username:              r.Username,
		Password:              r.Password,
		DB:                    r.DB,
		TLSEnabled:            r.TLSEnabled,
		TLSCAFile:             r.TLSCAFile,
		TLSInsecureSkipVerify: r.TLSInsecureSkipVerify,
		PoolSize:              r.PoolSize,
		DialTimeout:           r.DialTimeout,
		WaitReplicas:          r.WaitReplicas,
	}
}

// Scans for locks written by replicas without enhanced locking: how often,
// and how long one may take.
const (
	unindexedScanInterval = time.Minute
	unindexedScanTimeout  = 5 * time.Minute
)

// scanForUnindexedLocks indexes, now and then every interval until ctx is
// done, the locks that replicas without enhanced locking wrote on the keys we
// share with them: they keep no index, and without one List and closing a
// pull would not find them. It scans the whole keyspace, so it runs in the
// background, rarely, and a failure waits for the next round.
func (b *lockBackend) scanForUnindexedLocks(ctx context.Context, logger logging.SimpleLogging) {
	r, ok := b.Backend.(*backends.Redis)
	if !ok {
		return
	}
	for {
		scanCtx, cancel := context.WithTimeout(ctx, unindexedScanTimeout)
		n, err := r.ScanForUnindexedLocks(scanCtx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			logger.Warn("enhanced locking: scanning Redis for locks written without enhanced locking failed, next try in %s: %v", unindexedScanInterval, err)
		default:
			logger.Debug("enhanced locking: scanned Redis for locks written without enhanced locking: %d lock(s)", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(unindexedScanInterval):
		}
	}
}

// Close closes the backend and the Redis client it runs on.
func (b *lockBackend) Close() error {
	err := b.Backend.Close()
	if b.client != nil {
		if clientErr := b.client.Close(); err == nil {
			err = clientErr
		}
	}
	return err
}

// reportUnavailable tells the health checker at once that an operation found
// Redis out of reach; only its pings say when Redis is back.
func (b *lockBackend) reportUnavailable(err error) {
	if b.health != nil {
		b.health.ReportFailure(err)
	}
}

// status is the backend's health as /healthz shows it.
func (b *lockBackend) status() string {
	return string(b.healthStatus())
}

// healthStatus is the backend's health as last checked: an in-process
// backend is healthy while the process runs.
func (b *lockBackend) healthStatus() redisclient.HealthStatus {
	if b.health == nil {
		return redisclient.HealthHealthy
	}
	return b.health.Status().Status
}
