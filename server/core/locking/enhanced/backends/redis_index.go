package backends

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/events/models"
)

// Indexes let List and UnlockByPull avoid KEYS and whole-keyspace scans.
//
// Global index: one shard per cluster slot (one in all without a cluster),
// holding the lock keys of that slot, and a set naming the shards. Every
// acquisition adds its lock to the shard in the round trip that takes it, and
// one whose index write fails is given back, so a lock held through us is
// always in its shard. A shard may also hold stale keys: a release leaves its
// entry, and an upstream replica or an operator may delete a lock outside our
// scripts. List checks every entry and prunes stale ones with a script that
// re-checks in the lock's slot, so pruning never drops an entry whose lock was
// taken again (an acquisition writes the lock before its entry). The shard
// set only ever grows (it is bounded by the number of slots), so no race can
// drop a shard from it.
//
// Per-pull index: one set per (repo, pull) of the lock keys the pull asked
// for, held or not. It may hold stale keys; UnlockByPull releases each only
// if that pull holds it, so a stale key costs one script call. A lock the
// pull holds is in its index, except in one race in Redis Cluster: an
// UnlockByPull for a pull running at the same moment as that pull's own
// TryLock, whose script and index write reach different nodes in an order
// that brackets the UnlockByPull. The lock then stays in the global index and
// in List, from which `atlantis unlock` or the locks page release it. Without
// a cluster, a pipeline runs in order (script first), which closes that race.

// runIndexed runs a lock script and, in the same round trip, adds the lock key
// to the requesting pull's index and its shard to the shard set: those keys
// live in other slots, so a cluster cannot write them from the script. The
// writes are idempotent, so they run whatever the script decides.
//
// If the script ran but the index writes failed twice, the reply comes back
// with an error, so the caller can give back a lock it just took.
func (r *Redis) runIndexed(ctx context.Context, s *redis.Script, k lockKeys, lock models.ProjectLock, args ...any) (scriptReply, error) {
	pullIndex, _ := r.keys.pull(lock.Project.RepoFullName, lock.Pull.Num)
	run := func(eval bool) (*redis.Cmd, []redis.Cmder) {
		var script *redis.Cmd
		cmds, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			if eval {
				script = s.Eval(ctx, p, k.script(), args...)
			} else {
				script = s.EvalSha(ctx, p, k.script(), args...)
			}
			p.SAdd(ctx, pullIndex, k.lock)
			p.SAdd(ctx, r.keys.shards(), k.shard)
			return nil
		})
		failUnanswered(cmds, err)
		return script, cmds[1:]
	}
	script, index := run(false)
	if redis.HasErrorPrefix(script.Err(), "NOSCRIPT") {
		script, index = run(true)
	}
	reply, err := parseReply(script)
	if err != nil {
		return scriptReply{}, err
	}
	if firstErr(index) == nil {
		return reply, nil
	}
	_, err = r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.SAdd(ctx, pullIndex, k.lock)
		p.SAdd(ctx, r.keys.shards(), k.shard)
		return nil
	})
	if err != nil {
		return reply, fmt.Errorf("indexing lock %q: %w", k.lock, err)
	}
	return reply, nil
}

func firstErr(cmds []redis.Cmder) error {
	for _, c := range cmds {
		if err := c.Err(); err != nil {
			return err
		}
	}
	return nil
}

// List returns every lock in the global index, in lock key order.
func (r *Redis) List(ctx context.Context) ([]models.ProjectLock, error) {
	found, err := r.listIndexed(ctx)
	if err != nil {
		return nil, err
	}
	locks := make([]models.ProjectLock, len(found))
	for i, e := range found {
		locks[i] = e.lock
	}
	return locks, nil
}

// indexedLock is a lock read through the global index, with its key.
type indexedLock struct {
	key  string
	lock models.ProjectLock
}

// listIndexed reads every lock of the global index, in key order, and prunes
// the entries of locks deleted outside our scripts. A lock whose value cannot
// be decoded is reported and left out (legacydb.UndecodableLocks), never pruned.
func (r *Redis) listIndexed(ctx context.Context) ([]indexedLock, error) {
	shards, err := r.client.SMembers(ctx, r.keys.shards()).Result()
	if err != nil {
		return nil, redisError("listing lock index shards", err)
	}
	members := make([]*redis.StringSliceCmd, len(shards))
	if cmds, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, shard := range shards {
			members[i] = p.SMembers(ctx, shard)
		}
		return nil
	}); err != nil {
		return nil, redisError("reading lock index", failedKey(cmds, err))
	}

	// Every key of a shard is in one slot, so one MGET per shard is valid in
	// a cluster.
	keys := make([][]string, len(shards))
	values := make([]*redis.SliceCmd, len(shards))
	if _, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range shards {
			keys[i] = members[i].Val()
			if len(keys[i]) > 0 {
				values[i] = p.MGet(ctx, keys[i]...)
			}
		}
		return nil
	}); err != nil {
		return nil, redisError("reading locks", err)
	}

	var found []indexedLock
	var prune []scriptCall
	for i, shard := range shards {
		if values[i] == nil {
			continue
		}
		stale := []string{shard}
		for j, v := range values[i].Val() {
			key := keys[i][j]
			s, ok := v.(string)
			if !ok {
				stale = append(stale, key)
				continue
			}
			lock, err := r.decodeLock(key, s)
			if err != nil {
				r.undecodable.Report(key, []byte(s), err)
				continue
			}
			found = append(found, indexedLock{key, lock})
		}
		if len(stale) > 1 {
			prune = append(prune, scriptCall{pruneScript, stale, nil})
		}
	}
	if len(prune) > 0 {
		for _, cmd := range runAll(ctx, r.client, prune) {
			if err := cmd.Err(); err != nil {
				r.logger.Warn("pruning stale lock index entries: %s", err)
			}
		}
	}

	sort.Slice(found, func(i, j int) bool { return found[i].key < found[j].key })
	return found, nil
}

// UnlockByPull releases every lock pull pullNum of repoFullName holds, each
// handed to its next waiter, and returns the released locks. A lock in the
// pull's index that another pull holds now is left alone.
//
// The index also names the locks the pull is queued for (redis_queue.go),
// which it must keep naming: PullEntries and LeaveQueues find the pull's
// entries through it, and a lock handed to the pull later is released
// through it. So each release reports whether the pull still has an entry
// for its lock, and those locks go back into the index before the closing
// set is dropped.
func (r *Redis) UnlockByPull(ctx context.Context, repoFullName string, pullNum int) ([]models.ProjectLock, error) {
	index, closing := r.keys.pull(repoFullName, pullNum)
	members, err := takePullScript.Run(ctx, r.client, []string{index, closing}).StringSlice()
	if err != nil {
		return nil, redisError(fmt.Sprintf("reading lock index of pull %s#%d", repoFullName, pullNum), err)
	}
	sort.Strings(members)
	calls := make([]scriptCall, len(members))
	keys := make([]lockKeys, len(members))
	for i, key := range members {
		keys[i] = r.keys.forLockKey(key)
		calls[i] = r.releaseCall(keys[i], strconv.Itoa(pullNum), pullID(repoFullName, pullNum))
	}
	var locks []models.ProjectLock
	var queued []any
	var errs []error
	known := models.ProjectLock{Project: models.Project{RepoFullName: repoFullName}, Pull: models.PullRequest{Num: pullNum}}
	for i, cmd := range runAll(ctx, r.client, calls) {
		lock, err := r.releasedLock(keys[i], cmd, known)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if lock != nil {
			locks = append(locks, *lock)
		}
		if stillQueued(cmd) {
			queued = append(queued, keys[i].lock)
		}
	}
	if len(errs) > 0 {
		// The closing set stays for the next UnlockByPull of this pull.
		return locks, errors.Join(errs...)
	}
	// The index and the closing set share a slot, so this pipeline reaches
	// one node, in order: no key leaves both.
	if _, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		if len(queued) > 0 {
			p.SAdd(ctx, index, queued...)
		}
		p.Del(ctx, closing)
		return nil
	}); err != nil {
		r.logger.Warn("removing closed lock index %q: %s", closing, err)
	}
	return locks, nil
}

// RepairIndexes adds every lock of the global index to its pull's index, which
// a lost write may have left without it. It reads the index and the locks it
// names, nothing else, so start-up costs O(locks) however big the Redis is.
// It returns how many locks it found.
func (r *Redis) RepairIndexes(ctx context.Context) (int, error) {
	locks, err := r.listIndexed(ctx)
	if err != nil {
		return 0, err
	}
	if _, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, l := range locks {
			pullIndex, _ := r.keys.pull(l.lock.Project.RepoFullName, l.lock.Pull.Num)
			p.SAdd(ctx, pullIndex, l.key)
		}
		return nil
	}); err != nil {
		return len(locks), redisError("repairing the per-pull lock indexes", err)
	}
	return len(locks), nil
}

// ScanForUnindexedLocks adds every lock key in Redis to the indexes, so that
// List and UnlockByPull also see locks created by replicas without enhanced
// locking, which keep no index. It scans the whole keyspace of every master,
// in batches: run it in the background and rarely, never per request and
// never in the way of start-up. It returns how many locks it found.
func (r *Redis) ScanForUnindexedLocks(ctx context.Context) (int, error) {
	var found atomic.Int64
	scan := func(ctx context.Context, node redis.Cmdable) error {
		n, err := r.scanNode(ctx, node)
		found.Add(int64(n))
		return err
	}
	var err error
	if cluster, ok := r.client.(*redis.ClusterClient); ok {
		err = cluster.ForEachMaster(ctx, func(ctx context.Context, master *redis.Client) error {
			return scan(ctx, master)
		})
	} else {
		err = scan(ctx, r.client)
	}
	if err != nil {
		return int(found.Load()), redisError("scanning for unindexed locks", err)
	}
	return int(found.Load()), nil
}

const scanBatch = 1000

func (r *Redis) scanNode(ctx context.Context, node redis.Cmdable) (int, error) {
	var batch []string
	found := 0
	flush := func() error {
		found += len(batch)
		err := r.indexKeys(ctx, batch)
		batch = batch[:0]
		return err
	}
	iter := node.ScanType(ctx, 0, r.keys.lockPattern(), scanBatch, "string").Iterator()
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == scanBatch {
			if err := flush(); err != nil {
				return found, err
			}
		}
	}
	if err := iter.Err(); err != nil {
		return found, err
	}
	return found, flush()
}

func (r *Redis) indexKeys(ctx context.Context, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	values := make([]*redis.StringCmd, len(keys))
	if _, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, key := range keys {
			values[i] = p.Get(ctx, key)
		}
		return nil
	}); err != nil && err != redis.Nil {
		return err
	}
	_, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, key := range keys {
			value, err := values[i].Result()
			if err != nil {
				continue // deleted since the scan
			}
			k := r.keys.forLockKey(key)
			p.SAdd(ctx, k.shard, key)
			p.SAdd(ctx, r.keys.shards(), k.shard)
			lock, err := r.decodeLock(key, value)
			if err != nil {
				// Indexed all the same, so that List reports it.
				r.logger.Warn("indexing lock: %s", err)
				continue
			}
			pullIndex, _ := r.keys.pull(lock.Project.RepoFullName, lock.Pull.Num)
			p.SAdd(ctx, pullIndex, key)
		}
		return nil
	})
	return err
}
