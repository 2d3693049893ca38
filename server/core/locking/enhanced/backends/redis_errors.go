package backends

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// Error messages begin with the words upstream's Redis database uses for the
// same condition ("db transaction failed: ...", "failed to deserialize current
// lock: ..."), so alerts, docs and users matching upstream's text keep working;
// what enhanced locking adds comes after.
const upstreamTxFailed = "db transaction failed"

// Upstream's exact errors for taking a held command lock and releasing a free
// one.
var (
	errCommandLockExists = errors.New(upstreamTxFailed + ": lock already exists")
	errNoCommandLock     = errors.New(upstreamTxFailed + ": no lock exists")
)

// unavailableReplies are replies meaning Redis cannot serve now (starting,
// failing over, busy), as opposed to refusing this command.
var unavailableReplies = []string{
	"LOADING", "MASTERDOWN", "CLUSTERDOWN", "READONLY", "TRYAGAIN", "BUSY", "NOREPLICAS",
	"ERR max number of clients",
}

// redisError wraps err from the Redis calls made for op. Errors meaning Redis
// was out of reach or could not serve also match enhanced.ErrBackendUnavailable
// so callers fail closed with a message that says so, and those after which a
// command may have run without its reply arriving also match
// enhanced.ErrOutcomeUnknown. A reply refusing the command itself (a script
// error, WRONGTYPE) matches neither.
func redisError(op string, err error) error {
	var marks []error
	if isUnavailable(err) {
		marks = append(marks, enhanced.ErrBackendUnavailable)
		if outcomeUnknown(err) {
			marks = append(marks, enhanced.ErrOutcomeUnknown)
		}
	}
	return fmt.Errorf("%s: %w (redis: %s)", upstreamTxFailed, markedError{err, marks}, op)
}

// markedError is err matching marks as well, without their words in its
// message.
type markedError struct {
	err   error
	marks []error
}

func (m markedError) Error() string   { return m.err.Error() }
func (m markedError) Unwrap() []error { return append([]error{m.err}, m.marks...) }

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

// outcomeUnknown says whether a command that failed with err may have run:
// the request may have reached Redis and only the reply was lost (a deadline,
// a dropped connection). It did not run when no connection could be had, or
// when Redis answered with an error.
func outcomeUnknown(err error) bool {
	var reply redis.Error
	if errors.As(err, &reply) || errors.Is(err, redis.ErrPoolTimeout) || errors.Is(err, redis.ErrClosed) {
		return false
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return false
	}
	return true
}

// corruptLockError names the key so an operator can find the value. The
// value is left in place: overwriting it could grant a lock a pull holds.
func corruptLockError(key string, cause error) error {
	return fmt.Errorf("failed to deserialize current lock: %w (%v; redis key %q: inspect it with redis-cli GET and, "+
		"once you know which pull holds it, delete it with redis-cli DEL)", enhanced.ErrCorruptLock, cause, key)
}

// errUndecodable is the cause reported when a lock script found a stored value
// that is not a models.ProjectLock as JSON.
var errUndecodable = errors.New("stored value is not a project lock in JSON")
