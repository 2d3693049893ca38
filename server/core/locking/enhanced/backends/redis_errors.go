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
// error) matches neither; one refusing a stored value (a script's CORRUPT, a
// key of another Redis type) matches enhanced.ErrCorruptLock.
func redisError(op string, err error) error {
	if corrupt := corruptScriptError(err); corrupt != nil {
		return corrupt
	}
	var marks []error
	if isUnavailable(err) {
		marks = append(marks, enhanced.ErrBackendUnavailable)
		if outcomeUnknown(err) {
			marks = append(marks, enhanced.ErrOutcomeUnknown)
		}
	}
	if redis.HasErrorPrefix(err, "WRONGTYPE") {
		marks = append(marks, enhanced.ErrCorruptLock)
		op += ": " + wrongTypeFix
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

// failedKey is the error of the first of cmds that failed, naming its key,
// or err, a pipeline's own error, when none did: an operator then knows
// which key refused the command.
func failedKey(cmds []redis.Cmder, err error) error {
	for _, cmd := range cmds {
		if cerr := cmd.Err(); cerr != nil && !errors.Is(cerr, redis.Nil) && len(cmd.Args()) > 1 {
			return fmt.Errorf("key %q: %w", fmt.Sprint(cmd.Args()[1]), cerr)
		}
	}
	return err
}

// corruptLockError names the key so an operator can find the value. The
// value is left in place: overwriting it could grant a lock a pull holds.
func corruptLockError(key string, cause error) error {
	return corruptValueError(key, cause, "inspect it with redis-cli GET; unlocking it on the locks page frees it, "+
		"as does redis-cli DEL once you know which pull holds it")
}

// corruptValueError reports a value at key that is not what Atlantis keeps
// there, with fix, what to do about it.
func corruptValueError(key string, cause error, fix string) error {
	return fmt.Errorf("failed to deserialize current lock: %w (%v; redis key %q: %s)", enhanced.ErrCorruptLock, cause, key, fix)
}

// wrongTypeFix says what to do about a key of another Redis type.
const wrongTypeFix = "no Atlantis replica writes that type there: inspect the key with redis-cli TYPE and delete it with redis-cli DEL"

// corruptPrefix starts the error a script raises when a stored value stops
// it (lua/check.lua): "CORRUPT <what> at key <key>".
const corruptPrefix = "CORRUPT "

// corruptScriptError is a script's CORRUPT error as enhanced.ErrCorruptLock
// naming the key and the fix, or nil for any other error.
func corruptScriptError(err error) error {
	var reply redis.Error
	if !errors.As(err, &reply) || !strings.HasPrefix(reply.Error(), corruptPrefix) {
		return nil
	}
	msg := strings.TrimPrefix(reply.Error(), corruptPrefix)
	// Redis appends where the script failed: " script: <sha>, on @user_script:<line>."
	if i := strings.LastIndex(msg, " script: "); i >= 0 {
		msg = msg[:i]
	}
	what, key, _ := strings.Cut(msg, " at key ")
	return corruptValueError(key, errors.New(what), wrongTypeFix)
}

// errUndecodable is the cause reported when a lock script found a stored value
// that is not a models.ProjectLock as JSON.
var errUndecodable = errors.New("stored value is not a project lock in JSON")
