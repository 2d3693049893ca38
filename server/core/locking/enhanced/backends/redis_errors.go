package backends

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// unavailableReplies are replies meaning Redis cannot serve now (starting,
// failing over, busy), as opposed to refusing this command.
var unavailableReplies = []string{
	"LOADING", "MASTERDOWN", "CLUSTERDOWN", "READONLY", "TRYAGAIN", "BUSY", "NOREPLICAS",
	"ERR max number of clients",
}

// redisError wraps err from the Redis calls made for op. Errors meaning Redis
// was out of reach or could not serve wrap enhanced.ErrBackendUnavailable so
// callers fail closed with a message that says so; a reply refusing the
// command itself (a script error, WRONGTYPE) does not.
func redisError(op string, err error) error {
	if isUnavailable(err) {
		return fmt.Errorf("%s: %w: %w", op, enhanced.ErrBackendUnavailable, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

func isUnavailable(err error) bool {
	if errors.Is(err, context.Canceled) {
		return false
	}
	var reply redis.Error
	if errors.As(err, &reply) {
		for _, prefix := range unavailableReplies {
			if strings.HasPrefix(reply.Error(), prefix) {
				return true
			}
		}
		return false
	}
	// Anything that is not a reply never reached Redis or never came back:
	// refused or dropped connections, timeouts, a closed or exhausted pool.
	return true
}

// corruptLockError names the key so an operator can find the value. The
// value is left in place: overwriting it could grant a lock a pull holds.
func corruptLockError(key string, cause error) error {
	return fmt.Errorf("lock at Redis key %q: %w (%v): inspect it with redis-cli GET and, once you know "+
		"which pull holds it, delete it with redis-cli DEL", key, enhanced.ErrCorruptLock, cause)
}

// errUndecodable is the cause reported when a lock script found a stored value
// that is not a models.ProjectLock as JSON.
var errUndecodable = errors.New("stored value is not a project lock in JSON")
