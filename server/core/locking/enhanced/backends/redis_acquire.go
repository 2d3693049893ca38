package backends

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/events/models"
)

// setIfFree takes the lock if it is free, in one round trip of native
// commands: SET NX GET writes value only when the key does not exist and
// reads back what was there, atomically, so no other writer can slip in
// between, and the index writes ride in the same pipeline. It reports whether
// value now holds the lock, and else the value that does.
//
// Repeating it is safe, which is what a lost reply needs (go-redis repeats a
// pipeline after a network error by itself): a repeat reads back value, which
// carries this acquisition's unique token, and answers taken again.
//
// A pull that holds a lock does not wait for it. A free lock can have a
// durable entry of the pull taking it only when it was deleted outside our
// scripts (a release hands it to its queue instead), so the pipeline asks
// whether the pull has one, and only then does a second round trip take it
// out of the queue, without a notice: the pull took the lock itself.
//
// Before Redis 7.0, SET refuses NX with GET; the acquire script then does the
// same work.
func (r *Redis) setIfFree(ctx context.Context, k lockKeys, lock models.ProjectLock, value, token string) (bool, string, error) {
	if r.setGetRefused.Load() {
		return r.setIfFreeScripted(ctx, k, lock, value, token)
	}
	pullIndex, _ := r.keys.pull(lock.Project.RepoFullName, lock.Pull.Num)
	var set *redis.StatusCmd
	var queued *redis.BoolCmd
	cmds, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		set = p.SetArgs(ctx, k.lock, value, redis.SetArgs{Mode: "NX", Get: true})
		queued = p.HExists(ctx, k.entries, "p:"+pullID(baseRepo(lock), lock.Pull.Num))
		r.indexWrites(ctx, p, k, pullIndex)
		return nil
	})
	failUnanswered(cmds, err)
	current, setErr := set.Result()
	switch {
	case errors.Is(setErr, redis.Nil):
		current = value // it was free, and is ours now
	case redis.HasErrorPrefix(setErr, "ERR syntax error"):
		r.setGetRefused.Store(true)
		return r.setIfFreeScripted(ctx, k, lock, value, token)
	case setErr != nil:
		return false, "", setErr
	}
	taken := current == value
	if err := firstErr(cmds[2:]); err != nil {
		if err := r.writeIndexes(ctx, k, pullIndex); err != nil {
			return taken, current, err
		}
	}
	r.knownShards.Store(k.shard, true)
	if taken && queued.Val() {
		if err := leaveQueueScript.Run(ctx, r.client, k.script(), baseRepo(lock), lock.Pull.Num).Err(); err != nil {
			// It holds the lock all the same; its release drops the entry.
			r.logger.Warn("pull %d took lock %q and stays in its queue: %s", lock.Pull.Num, k.lock, err)
		}
	}
	return taken, current, nil
}

// setIfFreeScripted is setIfFree through the acquire script, for a Redis that
// refuses SET NX GET. A lock the same pull holds comes back adopted, and
// TryLock then adopts it again for this acquisition, which changes nothing.
func (r *Redis) setIfFreeScripted(ctx context.Context, k lockKeys, lock models.ProjectLock, value, token string) (bool, string, error) {
	reply, err := r.runIndexed(ctx, acquireScript, k, lock, value, baseRepo(lock), lock.Pull.Num, token)
	if err != nil {
		return reply.value == value, reply.value, err
	}
	if reply.status == statusCorrupt {
		return false, "", corruptLockError(k.lock, errUndecodable)
	}
	return reply.value == value, reply.value, nil
}

// indexWrites adds the lock to the requesting pull's index and to its global
// index shard, and registers the shard unless this process saw it registered.
// They are idempotent, so they run whatever the acquisition decides: indexing
// a lock another pull holds is how locks written by upstream replicas, which
// keep no index, get into ours.
func (r *Redis) indexWrites(ctx context.Context, p redis.Pipeliner, k lockKeys, pullIndex string) {
	p.SAdd(ctx, pullIndex, k.lock)
	p.SAdd(ctx, k.shard, k.lock)
	if _, known := r.knownShards.Load(k.shard); !known {
		p.SAdd(ctx, r.keys.shards(), k.shard)
	}
}

func (r *Redis) writeIndexes(ctx context.Context, k lockKeys, pullIndex string) error {
	cmds, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.SAdd(ctx, pullIndex, k.lock)
		p.SAdd(ctx, k.shard, k.lock)
		p.SAdd(ctx, r.keys.shards(), k.shard)
		return nil
	})
	if err != nil {
		return fmt.Errorf("indexing lock %q: %w", k.lock, failedKey(cmds, err))
	}
	return nil
}
