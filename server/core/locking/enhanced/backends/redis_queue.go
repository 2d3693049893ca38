package backends

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/events/models"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

var _ enhanced.QueueBackend = (*Redis)(nil)

// Durable queues share the waiters' sorted set (lua/helpers.lua): a durable
// entry is a waiter with metadata, whose deadline is its expiry rather than
// a heartbeat. So synchronous waits and durable entries keep one order, and
// the release script that hands a lock to a waiter hands it to a durable
// entry the same way, writing the entry's notice in the same step.
//
// Indexes. A lock with durable entries is in its slot's queues set, which
// Sweep and Queues walk; a queued pull's lock keys are in its per-pull index
// (redis_index.go), which LeaveQueues and PullEntries walk. Both are written
// before the entry, so no entry is ever missing from them; they may keep keys
// whose entries left, which cost one script call and are pruned (the queues
// set by Sweep, the per-pull index by UnlockByPull).

// Enqueue implements enhanced.QueueBackend.
func (r *Redis) Enqueue(ctx context.Context, req enhanced.QueueRequest) (enhanced.EnqueueResult, error) {
	k := r.keys.forProject(req.Lock.Project, req.Lock.Workspace)
	if req.Timeout <= 0 {
		return enhanced.EnqueueResult{}, fmt.Errorf("queueing for lock %q: the queue timeout must be positive, got %s", k.lock, req.Timeout)
	}
	token := newToken()
	value, err := encodeLock(req.Lock, token)
	if err != nil {
		return enhanced.EnqueueResult{}, fmt.Errorf("queueing for lock %q: %w", k.lock, err)
	}
	pullIndex, _ := r.keys.pull(req.Lock.Project.RepoFullName, req.Lock.Pull.Num)
	if err := r.writeIndexes(ctx, k, pullIndex); err != nil {
		return enhanced.EnqueueResult{}, redisError(fmt.Sprintf("queueing for lock %q", k.lock), err)
	}
	// Idempotent: a repeat finds the entry the first run made.
	call := scriptCall{enqueueScript, k.script(), []any{token, value, baseRepo(req.Lock), req.Lock.Pull.Num,
		req.Headstart.Microseconds(), req.Timeout.Milliseconds(), int(req.Priority)}}
	cmd := runAll(ctx, r.client, []scriptCall{call})[0]
	if err := cmd.Err(); err != nil && isUnavailable(err) && outcomeUnknown(err) {
		resolveCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), resolveTimeout)
		cmd = runAll(resolveCtx, r.client, []scriptCall{call})[0]
		cancel()
	}
	vals, err := cmd.Slice()
	if err != nil {
		return enhanced.EnqueueResult{}, redisError(fmt.Sprintf("queueing for lock %q", k.lock), err)
	}
	res, err := r.parseEnqueue(k, vals)
	if res.Queued {
		// The stored value is the request as first queued: the same pull and
		// project as this one.
		res.Entry.Lock = req.Lock
	}
	return res, err
}

func (r *Redis) parseEnqueue(k lockKeys, vals []any) (enhanced.EnqueueResult, error) {
	status, _ := vals[0].(int64)
	var res enhanced.EnqueueResult
	switch {
	case status == statusCorrupt:
		return res, corruptLockError(k.lock, errUndecodable)
	case status == 2:
		if len(vals) > 1 {
			if holder, ok := vals[1].(string); ok {
				lock, err := r.decodeLock(k.lock, holder)
				if err != nil {
					return res, err
				}
				res.Holder = &lock
			}
		}
		return res, nil
	case len(vals) != 6:
		return res, fmt.Errorf("queueing for lock %q: unexpected reply %v", k.lock, vals)
	}
	token, _ := vals[1].(string)
	position, _ := vals[2].(int64)
	meta, _ := vals[3].(string)
	deadline, _ := vals[4].(string)
	current, _ := vals[5].(string)
	entry, err := r.parseEntry(k, token, int(position), deadline, "", meta)
	if err != nil {
		return res, err
	}
	holder, err := r.decodeLock(k.lock, current)
	if err != nil {
		return res, err
	}
	return enhanced.EnqueueResult{Queued: true, Joined: status == 1, Entry: entry, Holder: &holder}, nil
}

// parseEntry builds an entry from what the scripts store: meta is
// "priority|enqueued ms|pull" for a durable entry and empty for a
// synchronous waiter; value may be empty when the caller fills Lock.
func (r *Redis) parseEntry(k lockKeys, token string, position int, deadline, value, meta string) (enhanced.QueueEntry, error) {
	e := enhanced.QueueEntry{ID: token, Position: position, Synchronous: meta == ""}
	corrupt := func(key, what string, args ...any) error {
		return corruptValueError(key, fmt.Errorf("queue entry %q: "+what, append([]any{token}, args...)...),
			fmt.Sprintf("drop the entry with redis-cli ZREM on key %q and the entry's id; its pull queues again when it plans", k.queue))
	}
	if ms, err := strconv.ParseInt(deadline, 10, 64); err == nil && ms > 0 {
		e.Expires = time.UnixMilli(ms)
	}
	if meta != "" {
		fields := strings.SplitN(meta, "|", 3)
		if len(fields) != 3 {
			return e, corrupt(k.entries, "metadata %q", meta)
		}
		prio, err := strconv.Atoi(fields[0])
		if err != nil {
			return e, corrupt(k.entries, "priority %q", fields[0])
		}
		enqueued, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil {
			return e, corrupt(k.entries, "time %q", fields[1])
		}
		e.Priority = enhanced.Priority(prio)
		e.Enqueued = time.UnixMilli(enqueued)
	}
	if value != "" {
		// Decoded apart from decodeLock: a waiter's value is ours, never a
		// lock a replica without enhanced locking wrote.
		if err := json.Unmarshal([]byte(value), &e.Lock); err != nil {
			return e, corrupt(k.values, "lock value: %v", err)
		}
		e.Lock.Time = e.Lock.Time.Local()
	}
	return e, nil
}

// LeaveQueue implements enhanced.QueueBackend.
func (r *Redis) LeaveQueue(ctx context.Context, project models.Project, workspace string, repoFullName string, pullNum int) (bool, error) {
	k := r.keys.forProject(project, workspace)
	n, err := leaveQueueScript.Run(ctx, r.client, k.script(), repoFullName, pullNum).Int()
	if err != nil {
		return false, redisError(fmt.Sprintf("leaving the queue of lock %q", k.lock), err)
	}
	return n == 1, nil
}

// LeaveQueues implements enhanced.QueueBackend: every entry of the pull
// leaves, expired ones too, and those that held a place are returned.
func (r *Redis) LeaveQueues(ctx context.Context, repoFullName string, pullNum int) ([]enhanced.QueueEntry, error) {
	keys, err := r.pullLockKeys(ctx, repoFullName, pullNum)
	if err != nil {
		return nil, err
	}
	entries, err := r.pullEntries(ctx, keys, repoFullName, pullNum)
	if err != nil {
		return nil, err
	}
	calls := make([]scriptCall, len(keys))
	for i, key := range keys {
		calls[i] = scriptCall{leaveQueueScript, r.keys.forLockKey(key).script(), []any{repoFullName, pullNum}}
	}
	var errs []error
	for i, cmd := range runAll(ctx, r.client, calls) {
		if err := cmd.Err(); err != nil {
			errs = append(errs, redisError(fmt.Sprintf("leaving the queue of lock %q", calls[i].keys[0]), err))
		}
	}
	return entries, errors.Join(errs...)
}

// PullEntries implements enhanced.QueueBackend.
func (r *Redis) PullEntries(ctx context.Context, repoFullName string, pullNum int) ([]enhanced.QueueEntry, error) {
	keys, err := r.pullLockKeys(ctx, repoFullName, pullNum)
	if err != nil {
		return nil, err
	}
	return r.pullEntries(ctx, keys, repoFullName, pullNum)
}

// pullLockKeys reads the pull's index: every lock it may have an entry for,
// in lock key order.
func (r *Redis) pullLockKeys(ctx context.Context, repoFullName string, pullNum int) ([]string, error) {
	index, closing := r.keys.pull(repoFullName, pullNum)
	keys, err := r.client.SUnion(ctx, index, closing).Result()
	if err != nil {
		return nil, redisError(fmt.Sprintf("reading lock index of pull %s#%d", repoFullName, pullNum), err)
	}
	sort.Strings(keys)
	return keys, nil
}

// pullEntries reads the pull's entries that hold a place among the locks
// keys.
func (r *Redis) pullEntries(ctx context.Context, keys []string, repoFullName string, pullNum int) ([]enhanced.QueueEntry, error) {
	queues, err := r.readQueues(ctx, keys, repoFullName, strconv.Itoa(pullNum))
	if err != nil {
		return nil, err
	}
	var entries []enhanced.QueueEntry
	for _, q := range queues {
		entries = append(entries, q.Entries...)
	}
	return entries, nil
}

// Queue implements enhanced.QueueBackend.
func (r *Redis) Queue(ctx context.Context, project models.Project, workspace string) (enhanced.LockQueue, error) {
	k := r.keys.forProject(project, workspace)
	queues, err := r.readQueues(ctx, []string{k.lock}, "", "")
	if err != nil {
		return enhanced.LockQueue{}, err
	}
	q := queues[0]
	q.Project, q.Workspace = project, workspace
	return q, nil
}

// Queues implements enhanced.QueueBackend: the locks in the queues sets, in
// lock key order, with at least one durable entry that holds a place.
func (r *Redis) Queues(ctx context.Context) ([]enhanced.LockQueue, error) {
	keys, err := r.queuedLockKeys(ctx)
	if err != nil {
		return nil, err
	}
	queues, err := r.readQueues(ctx, keys, "", "")
	if err != nil {
		return nil, err
	}
	var out []enhanced.LockQueue
	for _, q := range queues {
		for _, e := range q.Entries {
			if !e.Synchronous {
				out = append(out, q)
				break
			}
		}
	}
	return out, nil
}

// queuedLockKeys reads every queues set, in lock key order.
func (r *Redis) queuedLockKeys(ctx context.Context) ([]string, error) {
	shards, err := r.slotShards(ctx)
	if err != nil {
		return nil, err
	}
	members := make([]*redis.StringSliceCmd, len(shards))
	if _, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, shard := range shards {
			members[i] = p.SMembers(ctx, r.keys.inShardSlot("queues", shard))
		}
		return nil
	}); err != nil {
		return nil, redisError("reading the queues index", err)
	}
	var keys []string
	for _, m := range members {
		keys = append(keys, m.Val()...)
	}
	sort.Strings(keys)
	return keys, nil
}

// slotShards returns the index shard of every slot that has had locks (one
// without a cluster), whose slot-wide keys keyspace.inShardSlot names. A
// queue's slot is among them: its lock was held, so indexed, when the queue
// was joined.
func (r *Redis) slotShards(ctx context.Context) ([]string, error) {
	if !r.keys.cluster {
		return []string{r.keys.prefix + "locks"}, nil
	}
	shards, err := r.client.SMembers(ctx, r.keys.shards()).Result()
	if err != nil {
		return nil, redisError("listing lock index shards", err)
	}
	sort.Strings(shards)
	return shards, nil
}

// readQueues reads the lock and queue of each lock key, each in one
// consistent step; with a pull, only that pull's durable entry.
func (r *Redis) readQueues(ctx context.Context, lockKeys []string, repoFullName, pullNum string) ([]enhanced.LockQueue, error) {
	calls := make([]scriptCall, len(lockKeys))
	for i, key := range lockKeys {
		calls[i] = scriptCall{queueReadScript, r.keys.forLockKey(key).script(), []any{repoFullName, pullNum}}
	}
	out := make([]enhanced.LockQueue, 0, len(lockKeys))
	for i, cmd := range runAll(ctx, r.client, calls) {
		k := r.keys.forLockKey(lockKeys[i])
		vals, err := cmd.Slice()
		if err != nil {
			return nil, redisError(fmt.Sprintf("reading the queue of lock %q", k.lock), err)
		}
		q, err := r.parseQueue(k, vals)
		if err != nil {
			return nil, err
		}
		out = append(out, q)
	}
	return out, nil
}

func (r *Redis) parseQueue(k lockKeys, vals []any) (enhanced.LockQueue, error) {
	var q enhanced.LockQueue
	if len(vals) < 2 {
		return q, fmt.Errorf("reading the queue of lock %q: unexpected reply %v", k.lock, vals)
	}
	if current, ok := vals[0].(string); ok {
		holder, err := r.decodeLock(k.lock, current)
		if err != nil {
			return q, err
		}
		q.Holder = &holder
		q.HolderID = tokenOf(current)
		q.Project, q.Workspace = holder.Project, holder.Workspace
	}
	n, _ := vals[1].(int64)
	if len(vals) != 2+5*int(n) {
		return q, fmt.Errorf("reading the queue of lock %q: unexpected reply %v", k.lock, vals)
	}
	for i := 0; i < int(n); i++ {
		f := vals[2+5*i:]
		token, _ := f[0].(string)
		position, _ := f[1].(int64)
		deadline, _ := f[2].(string)
		value, _ := f[3].(string)
		meta, _ := f[4].(string)
		if value == "" {
			continue // a waiter half gone: it leaves with the next release
		}
		e, err := r.parseEntry(k, token, int(position), deadline, value, meta)
		if err != nil {
			return q, err
		}
		if q.Holder == nil {
			q.Project, q.Workspace = e.Lock.Project, e.Lock.Workspace
		}
		q.Entries = append(q.Entries, e)
	}
	return q, nil
}

// Sweep implements enhanced.QueueBackend.
func (r *Redis) Sweep(ctx context.Context) (enhanced.SweepResult, error) {
	keys, err := r.queuedLockKeys(ctx)
	if err != nil {
		return enhanced.SweepResult{}, err
	}
	calls := make([]scriptCall, len(keys))
	for i, key := range keys {
		k := r.keys.forLockKey(key)
		calls[i] = scriptCall{sweepScript, k.script(), []any{k.channel}}
	}
	var res enhanced.SweepResult
	var errs []error
	for i, cmd := range runAll(ctx, r.client, calls) {
		vals, err := cmd.Int64Slice()
		if err == nil && len(vals) != 3 {
			err = fmt.Errorf("unexpected reply %v", vals)
		}
		if err != nil {
			errs = append(errs, redisError(fmt.Sprintf("sweeping the queue of lock %q", keys[i]), err))
			continue
		}
		res.Expired += int(vals[0])
		res.Transferred += int(vals[1])
		res.Depth += int(vals[2])
	}
	return res, errors.Join(errs...)
}
