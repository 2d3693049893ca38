package testdrive

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/events/models"
)

// redisHolder is the pull holding dir's lock, as "#N", or "nobody", read
// from the lock's own key in Redis: upstream's key and JSON value, which
// every replica reads and writes.
func (s *story) redisHolder(dir string) (string, error) {
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	key := "pr/" + models.GenerateLockKey(models.NewProject(repoFull, dir, ""), "default")
	value, err := s.redis.Get(ctx, key).Result()
	if errors.Is(err, redis.Nil) {
		return "nobody", nil
	}
	if err != nil {
		return "", fmt.Errorf("reading lock %s from Redis: %w", key, err)
	}
	var lock models.ProjectLock
	if err := json.Unmarshal([]byte(value), &lock); err != nil {
		return "", fmt.Errorf("lock %s in Redis is not upstream's JSON: %w", key, err)
	}
	return fmt.Sprintf("#%d", lock.Pull.Num), nil
}
