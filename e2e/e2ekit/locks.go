package e2ekit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/events/models"
)

// LockKey is upstream's Redis key of the lock of dir in repo's default
// workspace: pr/{repo}/{path}/{workspace}/{project name}.
func LockKey(repo, dir string) string {
	return "pr/" + models.GenerateLockKey(models.NewProject(repo, dir, ""), "default")
}

// LockHolder is the pull holding the lock stored at key, 0 when it is free,
// read as every replica reads it: upstream's key and JSON value.
func LockHolder(ctx context.Context, c redis.Cmdable, key string) (int, error) {
	value, err := c.Get(ctx, key).Result()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var lock models.ProjectLock
	if err := json.Unmarshal([]byte(value), &lock); err != nil {
		return 0, fmt.Errorf("lock %s is not upstream's JSON: %w: %s", key, err, value)
	}
	if lock.Pull.Num <= 0 || lock.Pull.BaseRepo.FullName != lock.Project.RepoFullName || "pr/"+models.GenerateLockKey(lock.Project, lock.Workspace) != key {
		return 0, fmt.Errorf("lock %s holds an unexpected value: %s", key, value)
	}
	return lock.Pull.Num, nil
}
