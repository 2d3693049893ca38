package backends

import (
	"context"
	"fmt"
	"time"
)

// ClaimOnce records name for ttl unless a claim of it is already there, and
// reports whether this call made it: one SET NX PX, so of replicas claiming
// at once exactly one wins, and a replica that dies holding a claim holds it
// ttl at most. The deadlock detector claims each deadlock it acts on by this
// (deadlock.Claims). The key is claim:<name> under the key prefix (it does
// not start with "pr", see keyspace); any slot will do in a cluster, since
// nothing else is touched with it.
func (r *Redis) ClaimOnce(ctx context.Context, name string, ttl time.Duration) (bool, error) {
	if ttl <= 0 {
		return false, fmt.Errorf("claiming %q: the claim's ttl must be positive, got %s", name, ttl)
	}
	ok, err := r.client.SetNX(ctx, r.keys.claim(name), "1", ttl).Result()
	if err != nil {
		return false, redisError(fmt.Sprintf("claiming %q", name), err)
	}
	return ok, nil
}
