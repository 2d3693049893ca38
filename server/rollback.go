package server

import (
	"context"
	"crypto/rand"
	"path/filepath"
	"time"

	upstream "github.com/runatlantis/atlantis/server"
	"github.com/runatlantis/atlantis/server/core/db"
	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"
	tally "github.com/uber-go/tally/v4"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/legacydb"
	redisclient "github.com/atlantis-enhanced/atlantis/server/core/redis"
)

// copyLocksForRollback runs when a replica starts with enhanced locking off
// (--enhanced-locking-enabled=false, or DISABLE_ENHANCED_LOCKING) while the
// enhanced Redis is still configured: it makes the legacy database hold what
// Redis holds, so the rollback finds the locks other replicas took too (see
// enhanced/rollback.go). It is best effort and never stops the start, since
// it runs in emergencies: whatever fails, the legacy database keeps what this
// replica copied into it while enhanced locking ran.
func copyLocksForRollback(cfg EnhancedLockingConfig, userConfig upstream.UserConfig, database db.Database, logger logging.SimpleLogging) {
	if cfg.Backend != BackendRedis || len(cfg.Redis.Addrs) == 0 {
		return
	}
	legacy, err := legacydb.Guard(database, guardOptions(userConfig, logger, nil))
	if err != nil {
		logger.Warn("enhanced locking is off: %v; not copying the locks of Redis", err)
		return
	}
	synced, _, err := legacydb.SyncedAt(legacy)
	if err != nil {
		logger.Warn("enhanced locking is off: %v; not copying the locks of Redis", err)
		return
	}
	if !synced.IsZero() {
		logger.Info("enhanced locking is off: the legacy database has held the locks since %s, when a replica copied Redis's into it", synced.Format(time.RFC3339))
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*cfg.Redis.DialTimeout+10*time.Second)
	defer cancel()
	copied, dropped, err := copyFromRedis(ctx, cfg, userConfig, legacy)
	switch {
	case err != nil:
		logger.Warn("enhanced locking is off, and the locks of Redis could not be copied into the legacy database (%v): "+
			"it has the locks this replica copied while enhanced locking ran, and may miss ones other replicas took", err)
		// The legacy database is the truth from now on all the same: a later
		// start must not copy the frozen Redis over what changes meanwhile.
		if err := legacydb.MarkSynced(legacy, time.Now(), ""); err != nil {
			logger.Warn("enhanced locking is off: %v", err)
		}
	case copied < 0:
		// Upstream's database reads Redis's own keys: nothing to copy.
	default:
		logger.Info("enhanced locking is off: copied %d lock(s) from Redis into the legacy database and dropped %d stale one(s); "+
			"the legacy database holds the locks from now on", copied, dropped)
	}
}

// copyFromRedis snapshots Redis's locks, copies them into legacy and marks
// legacy as the truth. It returns -1 copied when upstream's database shares
// Redis's keys.
func copyFromRedis(ctx context.Context, cfg EnhancedLockingConfig, userConfig upstream.UserConfig, legacy *legacydb.Guarded) (int, int, error) {
	client, err := redisclient.NewClient(ctx, cfg.Redis.clientConfig())
	if err != nil {
		return 0, 0, err
	}
	defer client.Close() // nolint: errcheck
	shared, err := sharesLegacyLocks(ctx, client, cfg.Redis.KeyPrefix, userConfig.LockingDBType, legacy)
	if err != nil || shared {
		return -1, 0, err
	}
	backend, err := backends.NewRedis(client, backends.RedisOptions{KeyPrefix: cfg.Redis.KeyPrefix})
	if err != nil {
		return 0, 0, err
	}
	defer backend.Close() // nolint: errcheck
	id := rand.Text()
	snapshot, err := backend.TakeRollbackSnapshot(ctx, id)
	if err != nil {
		return 0, 0, err
	}
	copied, dropped, err := enhanced.CopyForRollback(legacy, snapshot.Locks, snapshot.ApplyLock, func(locks []models.ProjectLock) ([]time.Time, error) {
		return backend.LastReleased(ctx, locks)
	})
	if err != nil {
		return 0, 0, err
	}
	return copied, dropped, legacydb.MarkSynced(legacy, time.Now(), id)
}

// takeBackAfterRollback runs at an enhanced start over a legacy database of
// its own: if a rollback made it the truth, what it released meanwhile is
// released in Redis before the import brings in what it took. It returns what
// to do once the import succeeded: forget the marker and the snapshot. Until
// then a failed start takes back again at the next, which changes nothing
// taken back already.
func (s *Server) takeBackAfterRollback(ctx context.Context, legacy *legacydb.Guarded, r *backends.Redis) (func() error, error) {
	synced, id, err := legacydb.SyncedAt(legacy)
	if err != nil || synced.IsZero() {
		return func() error { return nil }, err
	}
	if id == "" {
		s.Logger.Warn("enhanced locking: the legacy database has held the locks since %s, but Redis could not be copied then, so "+
			"locks released while enhanced locking was off may still be held in Redis: check the locks page", synced.Format(time.RFC3339))
	} else {
		snapshot, err := r.RollbackSnapshot(ctx, id)
		if err != nil {
			return nil, err
		}
		if snapshot != nil {
			n, err := s.Adapter.TakeBackAfterRollback(ctx, snapshot.Locks, snapshot.ApplyLock)
			if err != nil {
				return nil, err
			}
			s.Logger.Info("enhanced locking: released %d lock(s) in Redis that were released while enhanced locking was off (since %s)", n, synced.Format(time.RFC3339))
		}
	}
	return func() error {
		if id != "" {
			if err := r.DropRollbackSnapshot(ctx, id); err != nil {
				return err
			}
		}
		return legacydb.ClearSynced(legacy)
	}, nil
}

// guardOptions let the guard read upstream's BoltDB file, in the data dir,
// when upstream's List cannot decode a lock in it.
func guardOptions(userConfig upstream.UserConfig, logger logging.SimpleLogging, scope tally.Scope) legacydb.Options {
	return legacydb.Options{File: filepath.Join(userConfig.DataDir, "atlantis.db"), Logger: logger, Scope: scope}
}
