package backends

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"
	tally "github.com/uber-go/tally/v4"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/legacydb"
)

const defaultWaiterTTL = 15 * time.Second

// RedisOptions configures a Redis backend. The zero value shares locks with
// upstream replicas on the same Redis and drops a crashed waiter after 15s.
type RedisOptions struct {
	// KeyPrefix is prepended to every key. Leave it empty for a fleet that
	// mixes upstream and enhanced replicas: upstream never prefixes its keys,
	// so with a prefix the two no longer exclude each other. It must pass
	// ValidateKeyPrefix.
	KeyPrefix string
	// WaiterTTL is how long a waiting request stays queued without a
	// heartbeat; waiters heartbeat every WaiterTTL/3.
	WaiterTTL time.Duration
	Logger    logging.SimpleLogging
	// Scope receives the backend's metrics; nil means none.
	Scope tally.Scope
	// NoReleaseTimes stops recording when each lock was released. The record
	// keeps a legacy database's stale copies from being imported back; where
	// the legacy database is upstream's Redis database on these very keys,
	// nothing is ever imported and the record is a write per release for
	// nothing.
	NoReleaseTimes bool
}

// Redis is the enhanced backend for many Atlantis replicas sharing one Redis:
// standalone, Sentinel or Cluster (not Ring, which cannot run a script over
// a lock and its related keys).
//
// Every change to a lock is one Lua script over keys of one cluster slot, so
// no interleaving of replicas grants a lock twice. Locks keep upstream's key
// and JSON value, so upstream replicas on the same Redis see ours and we see
// theirs.
//
// Ownership. A lock belongs to a pull, as upstream's do: Atlantis releases by
// lock key (Unlock) or by pull (UnlockIfOwnedByPull, UnlockByPull) and knows
// nothing finer, so those compare the pull number atomically. Each acquisition
// also writes a random token into the lock's value (redis_value.go); the paths
// that act on a grant they may have lost track of (a waiter that gives up just
// as the lock is handed to it, an acquisition whose reply was lost) release
// only while the stored value is still the one they wrote, so they never free
// a later holder's lock.
type Redis struct {
	client      redis.UniversalClient
	keys        keyspace
	waiterTTL   time.Duration
	logger      logging.SimpleLogging
	nonEnhanced *nonEnhancedWrites
	undecodable *legacydb.UndecodableLocks
	// noReleaseTimes is RedisOptions.NoReleaseTimes.
	noReleaseTimes bool
	// setGetRefused is set once Redis refused SET with both NX and GET
	// (before 7.0): acquisitions then go through the acquire script.
	setGetRefused atomic.Bool
	// knownShards are the index shards this process saw registered in the
	// shard set, which only ever grows: they need no SADD again.
	knownShards sync.Map

	closed    chan struct{}
	closeOnce sync.Once
	// inFlight tracks waits and the goroutines of abandon, which Close waits
	// for so that they leave Redis before the caller closes the client;
	// closing, under closeMu, stops new ones once Close waits.
	closeMu  sync.Mutex
	closing  bool
	inFlight sync.WaitGroup
}

var _ enhanced.Backend = (*Redis)(nil)

// NewRedis returns a backend storing locks through client, which the caller
// keeps and closes.
func NewRedis(client redis.UniversalClient, opts RedisOptions) (*Redis, error) {
	if err := ValidateKeyPrefix(opts.KeyPrefix); err != nil {
		return nil, err
	}
	if opts.WaiterTTL <= 0 {
		opts.WaiterTTL = defaultWaiterTTL
	}
	if opts.Logger == nil {
		opts.Logger = enhanced.NopLogger{}
	}
	if opts.Scope == nil {
		opts.Scope = tally.NoopScope
	}
	_, cluster := client.(*redis.ClusterClient)
	return &Redis{
		client:         client,
		keys:           keyspace{prefix: opts.KeyPrefix, cluster: cluster},
		waiterTTL:      opts.WaiterTTL,
		logger:         opts.Logger,
		nonEnhanced:    newNonEnhancedWrites(opts.Logger, opts.Scope),
		undecodable:    legacydb.NewUndecodableLocks(opts.Logger, opts.Scope),
		noReleaseTimes: opts.NoReleaseTimes,
		closed:         make(chan struct{}),
	}, nil
}

// TryLock takes the lock in one round trip of native commands (see
// setIfFree). Only a lock its own pull already holds goes through the acquire
// script, which adopts it for this acquisition.
func (r *Redis) TryLock(ctx context.Context, req enhanced.LockRequest) (bool, models.ProjectLock, error) {
	k := r.keys.forProject(req.Lock.Project, req.Lock.Workspace)
	token := newToken()
	value, err := encodeLock(req.Lock, token)
	if err != nil {
		return false, models.ProjectLock{}, fmt.Errorf("locking %q: %w", k.lock, err)
	}
	taken, current, err := r.setIfFree(ctx, k, req.Lock, value, token)
	if err != nil && isUnavailable(err) && outcomeUnknown(err) {
		// The SET may have run. Repeating it with the same value answers
		// what the first did (it reads back our own value), or takes the
		// lock now, which is what the caller asked for.
		resolveCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), resolveTimeout)
		taken, current, err = r.setIfFree(resolveCtx, k, req.Lock, value, token)
		cancel()
	}
	if err != nil {
		if taken || outcomeUnknown(err) {
			// Taken, or maybe taken, by an acquisition nobody will be told of
			// (its index writes failed, or Redis stopped answering): give it
			// back rather than let the pull hold a lock unknowingly.
			r.abandon(k, token, value)
		}
		return false, models.ProjectLock{}, redisError(fmt.Sprintf("locking %q", k.lock), err)
	}
	if taken {
		return true, req.Lock, nil
	}
	holder, err := r.decodeLock(k.lock, current)
	if err != nil {
		return false, models.ProjectLock{}, err
	}
	if baseRepo(holder) != baseRepo(req.Lock) || holder.Pull.Num != req.Lock.Pull.Num {
		return false, holder, nil
	}
	return r.adopt(ctx, k, req.Lock, value, token)
}

// adopt runs the acquire script for a lock the requesting pull holds: it
// makes this acquisition the lock's owner, so that giving back an earlier
// acquisition of the pull cannot free it (see lua/helpers.lua).
func (r *Redis) adopt(ctx context.Context, k lockKeys, lock models.ProjectLock, value, token string) (bool, models.ProjectLock, error) {
	reply, err := r.runIndexed(ctx, acquireScript, k, lock, value, baseRepo(lock), lock.Pull.Num, token)
	if err != nil {
		if reply.value == value {
			r.abandon(k, token, value)
		}
		return false, models.ProjectLock{}, redisError(fmt.Sprintf("locking %q", k.lock), err)
	}
	if reply.status == statusCorrupt {
		return false, models.ProjectLock{}, corruptLockError(k.lock, errUndecodable)
	}
	if reply.value == value {
		return true, lock, nil
	}
	curr, err := r.decodeLock(k.lock, reply.value)
	if err != nil {
		return false, models.ProjectLock{}, err
	}
	return reply.status == statusYes, curr, nil
}

// Unlock releases the lock whoever holds it, handing it to the next waiter,
// and returns the released lock, or nil if there was none.
func (r *Redis) Unlock(ctx context.Context, project models.Project, workspace string) (*models.ProjectLock, error) {
	return r.release(ctx, r.keys.forProject(project, workspace), "", models.ProjectLock{Project: project, Workspace: workspace})
}

// UnlockIfOwnedByPull is Unlock when pull pullNum holds the lock, else nil.
func (r *Redis) UnlockIfOwnedByPull(ctx context.Context, project models.Project, workspace string, pullNum int) (*models.ProjectLock, error) {
	known := models.ProjectLock{Project: project, Workspace: workspace, Pull: models.PullRequest{Num: pullNum}}
	return r.release(ctx, r.keys.forProject(project, workspace), strconv.Itoa(pullNum), known)
}

// release runs one release call. A call whose reply was lost is repeated
// with the same call id, which answers what the first run did. known is what
// the caller knows of the lock (see releasedLock).
func (r *Redis) release(ctx context.Context, k lockKeys, pull string, known models.ProjectLock) (*models.ProjectLock, error) {
	call := r.releaseCall(k, pull, "")
	cmd := runAll(ctx, r.client, []scriptCall{call})[0]
	if err := cmd.Err(); err != nil && isUnavailable(err) && outcomeUnknown(err) {
		resolveCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), resolveTimeout)
		cmd = runAll(resolveCtx, r.client, []scriptCall{call})[0]
		cancel()
	}
	return r.releasedLock(k, cmd, known)
}

// releaseCall releases k if pull holds it (any holder when pull is ""); with
// a queued pull ("<base repo>#<number>"), its reply says whether that pull
// still has a durable entry for k (stillQueued).
func (r *Redis) releaseCall(k lockKeys, pull, queuedPull string) scriptCall {
	releasedAt := ""
	if !r.noReleaseTimes {
		releasedAt = strconv.FormatInt(time.Now().UnixMicro(), 10)
	}
	return scriptCall{releaseScript, k.script(), []any{pull, newToken(), k.channel, releasedAt, queuedPull}}
}

// stillQueued reads the queued flag of a release call's reply.
func stillQueued(cmd *redis.Cmd) bool {
	vals, err := cmd.Slice()
	if err != nil || len(vals) < 3 {
		return false
	}
	flag, _ := vals[2].(int64)
	return flag == 1
}

// releasedLock reads a release call's reply. A lock the call released is
// reported released even when its value cannot be decoded (a release by key
// frees a corrupt lock, see lua/helpers.lua): as known, what the caller knows
// of it, and the value it had is logged.
func (r *Redis) releasedLock(k lockKeys, cmd *redis.Cmd, known models.ProjectLock) (*models.ProjectLock, error) {
	reply, err := parseReply(cmd)
	if err != nil {
		return nil, redisError(fmt.Sprintf("unlocking %q", k.lock), err)
	}
	switch reply.status {
	case statusYes:
		lock, err := r.decodeLock(k.lock, reply.value)
		if err != nil {
			r.logger.Warn("released lock %q, whose stored value Atlantis cannot read, so no pull is told: %s; it was %s",
				k.lock, errors.Unwrap(err), quoteValue(reply.value))
			return &known, nil
		}
		return &lock, nil
	case statusCorrupt:
		return nil, corruptLockError(k.lock, errUndecodable)
	default:
		return nil, nil
	}
}

// GetLock returns the lock, or nil if it is free.
func (r *Redis) GetLock(ctx context.Context, project models.Project, workspace string) (*models.ProjectLock, error) {
	key := r.keys.forProject(project, workspace).lock
	value, err := r.client.Get(ctx, key).Result()
	if err == redis.Nil {
		return nil, nil
	}
	if err != nil {
		return nil, redisError(fmt.Sprintf("reading lock %q", key), err)
	}
	lock, err := r.decodeLock(key, value)
	if err != nil {
		return nil, err
	}
	return &lock, nil
}

// QueueLength is how many requests wait for the lock, counting a crashed
// waiter until the next release drops it.
func (r *Redis) QueueLength(ctx context.Context, project models.Project, workspace string) (int, error) {
	k := r.keys.forProject(project, workspace)
	n, err := r.client.ZCard(ctx, k.queue).Result()
	if err != nil {
		return 0, redisError(fmt.Sprintf("reading waiters of %q at key %q", k.lock, k.queue), err)
	}
	return int(n), nil
}

func (r *Redis) Ping(ctx context.Context) error {
	if err := r.client.Ping(ctx).Err(); err != nil {
		return redisError("pinging redis", err)
	}
	return nil
}

// NonEnhancedWrites reports the locks seen that replicas without enhanced
// locking wrote.
func (r *Redis) NonEnhancedWrites() NonEnhancedWrites {
	return r.nonEnhanced.snapshot()
}

// Close ends pending waits, which leave their queues, and the attempts to give
// back abandoned acquisitions, and returns once they are done. It does not close the client, which belongs to
// the caller.
func (r *Redis) Close() error {
	r.closeOnce.Do(func() { close(r.closed) })
	r.closeMu.Lock()
	r.closing = true
	r.closeMu.Unlock()
	r.inFlight.Wait()
	return nil
}

// track counts a wait or an abandon in, unless the backend is closing; the
// caller calls done when it ends.
func (r *Redis) track() (done func(), ok bool) {
	r.closeMu.Lock()
	defer r.closeMu.Unlock()
	if r.closing {
		return nil, false
	}
	r.inFlight.Add(1)
	return r.inFlight.Done, true
}

// decodeLock decodes a stored lock and notes a lock written by a replica
// without enhanced locking.
func (r *Redis) decodeLock(key, value string) (models.ProjectLock, error) {
	var lock models.ProjectLock
	if err := json.Unmarshal([]byte(value), &lock); err != nil {
		return models.ProjectLock{}, corruptLockError(key, err)
	}
	// Local, as upstream's GetLock does (https://github.com/golang/go/issues/19486).
	lock.Time = lock.Time.Local()
	if !writtenByEnhanced(value) && r.nonEnhanced.observe(key, value, lock) {
		r.indexInBackground(key, lock)
	}
	return lock, nil
}

// indexInBackground indexes a lock a replica without enhanced locking wrote,
// when it is first seen: such replicas keep no index, and without it closing
// the lock's pull would not release it. The background scan finds the locks
// nobody happens to read.
func (r *Redis) indexInBackground(key string, lock models.ProjectLock) {
	done, ok := r.track()
	if !ok {
		return
	}
	go func() {
		defer done()
		ctx, cancel := context.WithTimeout(context.Background(), leaveTimeout)
		defer cancel()
		pullIndex, _ := r.keys.pull(lock.Project.RepoFullName, lock.Pull.Num)
		if err := r.writeIndexes(ctx, r.keys.forLockKey(key), pullIndex); err != nil {
			r.logger.Warn("%s", err)
		}
	}()
}

// quoteValue quotes a stored value for a log line, cut to a length a log
// line can carry.
func quoteValue(v string) string {
	const max = 512
	if len(v) <= max {
		return strconv.Quote(v)
	}
	return fmt.Sprintf("%s... (%d bytes)", strconv.Quote(v[:max]), len(v))
}

// baseRepo is the repo a lock's pull belongs to, which with the pull number
// identifies the pull.
func baseRepo(lock models.ProjectLock) string {
	return lock.Pull.BaseRepo.FullName
}

// newToken returns a fresh acquisition or call id. crypto/rand cannot fail
// (since Go 1.24 it crashes the process instead).
func newToken() string {
	return rand.Text()
}
