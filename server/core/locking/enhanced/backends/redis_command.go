package backends

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/events/command"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// Command locks (the global apply lock) use upstream's key and JSON, so
// upstream replicas honour ours. SET NX makes taking one a single atomic
// command; upstream's own GET then SET is not.

// LockCommand takes the lock on cmdName, failing if it is already taken.
func (r *Redis) LockCommand(ctx context.Context, cmdName command.Name, lockTime time.Time) (*command.Lock, error) {
	lock := command.Lock{
		CommandName:  cmdName,
		LockMetadata: command.LockMetadata{UnixTime: lockTime.Unix()},
	}
	value, err := json.Marshal(lock)
	if err != nil {
		return nil, fmt.Errorf("encoding %s command lock: %w", cmdName, err)
	}
	key := r.keys.command(cmdName)
	set, err := r.client.SetNX(ctx, key, value, 0).Result()
	if err != nil {
		return nil, redisError(fmt.Sprintf("locking command %s", cmdName), err)
	}
	if !set {
		return nil, fmt.Errorf("%w (redis key %q)", errCommandLockExists, key)
	}
	return &lock, nil
}

// UnlockCommand removes the lock on cmdName, failing if there is none, as
// upstream does.
func (r *Redis) UnlockCommand(ctx context.Context, cmdName command.Name) error {
	key := r.keys.command(cmdName)
	n, err := r.client.Del(ctx, key).Result()
	if err != nil {
		return redisError(fmt.Sprintf("unlocking command %s", cmdName), err)
	}
	if n == 0 {
		return fmt.Errorf("%w (redis key %q)", errNoCommandLock, key)
	}
	return nil
}

// CheckCommandLock returns the lock on cmdName, or nil if there is none.
func (r *Redis) CheckCommandLock(ctx context.Context, cmdName command.Name) (*command.Lock, error) {
	key := r.keys.command(cmdName)
	value, err := r.client.Get(ctx, key).Result()
	if err == redis.Nil {
		return nil, nil
	}
	if err != nil {
		return nil, redisError(fmt.Sprintf("reading command lock %s", cmdName), err)
	}
	var lock command.Lock
	if err := json.Unmarshal([]byte(value), &lock); err != nil {
		return nil, fmt.Errorf("failed to deserialize Lock: %w (%v; redis key %q)", enhanced.ErrCorruptLock, err, key)
	}
	return &lock, nil
}
