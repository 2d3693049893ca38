package server

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/core/db"
	"github.com/runatlantis/atlantis/server/events/models"
)

// sharedKeysProbeRepo is the repository of the probe lock: no pull has it.
const sharedKeysProbeRepo = "atlantis-enhanced/shared-keys-probe"

// sharesLegacyLocks says whether the legacy database is upstream's Redis
// database reading the very keys the enhanced backend writes. Then there is
// nothing to mirror or import, and a rollback finds every lock where upstream
// looks for it; mirroring would write into the backend's own keys.
//
// It asks Redis instead of comparing addresses, which differ for one server
// (a hostname and its IP, sentinels against the master's address, a cluster
// seed list): it writes a probe lock through the backend's client under
// upstream's key for a project no pull has, and reads it back through the
// legacy database. Only unprefixed keys can be shared.
func sharesLegacyLocks(ctx context.Context, client redis.UniversalClient, keyPrefix, lockingDBType string, legacy db.Database) (bool, error) {
	if lockingDBType != BackendRedis || keyPrefix != "" {
		return false, nil
	}
	probe := models.ProjectLock{
		Project:   models.NewProject(sharedKeysProbeRepo, fmt.Sprintf("%d", time.Now().UnixNano()), ""),
		Workspace: "default",
		Pull:      models.PullRequest{BaseRepo: models.Repo{FullName: sharedKeysProbeRepo}},
		Time:      time.Now(),
	}
	value, err := json.Marshal(probe)
	if err != nil {
		return false, err
	}
	key := "pr/" + models.GenerateLockKey(probe.Project, probe.Workspace)
	// Expires by itself should this process die before deleting it.
	if err := client.Set(ctx, key, value, time.Minute).Err(); err != nil {
		return false, fmt.Errorf("writing the probe that tells whether upstream's Redis database shares the lock keys: %w", err)
	}
	defer client.Del(context.WithoutCancel(ctx), key) // nolint: errcheck
	seen, err := legacy.GetLock(probe.Project, probe.Workspace)
	if err != nil {
		return false, fmt.Errorf("reading the probe through upstream's Redis database (--redis-host, --redis-port, --redis-db): %w", err)
	}
	return seen != nil, nil
}
