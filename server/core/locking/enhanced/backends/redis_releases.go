package backends

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/events/models"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

var _ enhanced.ReleaseHistory = (*Redis)(nil)

// LastReleased returns when each lock's project and workspace was last
// released here, or the zero time if never. The release script records the
// time unless the backend was opened with NoReleaseTimes, and so does a
// waiter that takes a lock whose holder vanished (lua/wait.lua): one hash
// field per lock key ever released, so the answer survives the lock and
// costs one HGET per lock.
func (r *Redis) LastReleased(ctx context.Context, locks []models.ProjectLock) ([]time.Time, error) {
	cmds := make([]*redis.StringCmd, len(locks))
	if _, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, l := range locks {
			k := r.keys.forProject(l.Project, l.Workspace)
			cmds[i] = p.HGet(ctx, k.releaseTimes, k.lock)
		}
		return nil
	}); err != nil && err != redis.Nil {
		return nil, redisError("reading when locks were last released", err)
	}
	times := make([]time.Time, len(locks))
	for i, cmd := range cmds {
		v, err := cmd.Result()
		if err == redis.Nil {
			continue
		}
		if err != nil {
			return nil, redisError("reading when locks were last released", err)
		}
		us, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, redisError("reading when locks were last released", err)
		}
		times[i] = time.UnixMicro(us)
	}
	return times, nil
}
