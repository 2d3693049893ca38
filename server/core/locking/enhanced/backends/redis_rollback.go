package backends

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"
)

// RollbackSnapshot is what Redis held when a replica starting with enhanced
// locking off copied it into its legacy database. The legacy database is the
// truth from then on; Redis is left as it was, which keeps a fleet that rolls
// back one replica at a time exclusive among the replicas still enhanced.
// When enhanced locking comes back, a lock of the snapshot that the legacy
// database no longer holds was released while enhanced locking was off, and
// is released in Redis too, so it does not come back from the dead.
type RollbackSnapshot struct {
	Locks     []models.ProjectLock `json:"locks"`
	ApplyLock bool                 `json:"apply_lock"`
}

// rollbackSnapshotTTL bounds how long a snapshot nobody takes back stays.
const rollbackSnapshotTTL = 90 * 24 * time.Hour

func (ks keyspace) rollbackSnapshot(id string) string {
	return ks.prefix + "atlantis:enhanced:rollback-snapshot:" + id
}

// TakeRollbackSnapshot reads every lock and the global apply lock, and stores
// them under id.
func (r *Redis) TakeRollbackSnapshot(ctx context.Context, id string) (RollbackSnapshot, error) {
	locks, err := r.List(ctx)
	if err != nil {
		return RollbackSnapshot{}, err
	}
	apply, err := r.CheckCommandLock(ctx, command.Apply)
	if err != nil {
		return RollbackSnapshot{}, err
	}
	snapshot := RollbackSnapshot{Locks: locks, ApplyLock: apply != nil && apply.IsLocked()}
	value, err := json.Marshal(snapshot)
	if err != nil {
		return RollbackSnapshot{}, fmt.Errorf("encoding the rollback snapshot: %w", err)
	}
	if err := r.client.Set(ctx, r.keys.rollbackSnapshot(id), value, rollbackSnapshotTTL).Err(); err != nil {
		return RollbackSnapshot{}, redisError("storing the rollback snapshot", err)
	}
	return snapshot, nil
}

// RollbackSnapshot returns the snapshot stored under id, if any.
func (r *Redis) RollbackSnapshot(ctx context.Context, id string) (*RollbackSnapshot, error) {
	value, err := r.client.Get(ctx, r.keys.rollbackSnapshot(id)).Result()
	if err == redis.Nil {
		return nil, nil
	}
	if err != nil {
		return nil, redisError("reading the rollback snapshot", err)
	}
	var snapshot RollbackSnapshot
	if err := json.Unmarshal([]byte(value), &snapshot); err != nil {
		return nil, fmt.Errorf("the rollback snapshot at Redis key %q is not one: %w", r.keys.rollbackSnapshot(id), err)
	}
	return &snapshot, nil
}

// DropRollbackSnapshot deletes the snapshot stored under id.
func (r *Redis) DropRollbackSnapshot(ctx context.Context, id string) error {
	if err := r.client.Del(ctx, r.keys.rollbackSnapshot(id)).Err(); err != nil {
		return redisError("removing the rollback snapshot", err)
	}
	return nil
}
