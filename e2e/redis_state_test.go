package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/e2e/e2ekit"
	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
)

// Redis keys besides the locks (see server/core/locking/enhanced/backends/
// redis_keys.go and upstream's server/core/redis/redis.go).
const (
	applyLockKey = "global/apply/lock"
	globalIndex  = "locks"
	shardSet     = "locks:shards"
	// deliveriesKey is the webhook de-duplication's sorted set (see
	// server/webhook_dedupe.go): payload hash -> expiry, unix ms.
	deliveriesKey = "atlantis:webhook-deliveries"
	// deliveryTTL is how long a handled delivery's record lasts.
	deliveryTTL = 72 * time.Hour
)

// pullIndexKey is the enhanced backend's per-pull index of lock keys.
func pullIndexKey(pull int) string { return fmt.Sprintf("pull{%s::%d}", repoFull, pull) }

// pullClosingKey is where an UnlockByPull moves the pull's index while it
// releases the locks.
func pullClosingKey(pull int) string { return fmt.Sprintf("pullclosing{%s::%d}", repoFull, pull) }

// The priority queue's keys besides the waiters' (w{…}, wd{…}, wv{…}): the
// durable entries' metadata qm{lock key}, the set of locks with queues, and
// the outbox of hand-over and expiry notices not yet delivered.
const (
	queuesKey        = "queues"
	outboxKey        = "outbox"
	outboxNoticesKey = "outbox:notices"
)

// commandLeasesKey lists the pulls' command leases (cmdlease{repo::num}),
// pruned when read (backends/redis_keys.go).
const commandLeasesKey = "cmdleases"

// releaseTimes is the enhanced backend's record of when each lock was last
// released: HASH lock key -> unix microseconds.
const releaseTimes = "locks:released"

// acquisitionToken is the field an enhanced replica adds to every lock value
// it writes (see server/core/locking/enhanced/backends/redis_value.go).
const acquisitionToken = `,"EnhancedLockToken":"`

// deliveryRecord is the member the de-duplication stores for d: the first
// 128 bits of SHA-256 over the event type, a NUL and the body, in hex.
func deliveryRecord(d vcssim.Delivery) string {
	sum := sha256.Sum256(append(append([]byte(d.Event), 0), d.Body...))
	return hex.EncodeToString(sum[:16])
}

// deliveryLeft is how long d's record has left by the Redis clock, or 0
// when Redis holds none.
func (h *harness) deliveryLeft(d vcssim.Delivery) time.Duration {
	h.t.Helper()
	ctx, cancel := h.rctx()
	defer cancel()
	expiry, err := h.rdb.ZScore(ctx, deliveriesKey, deliveryRecord(d)).Result()
	if errors.Is(err, redis.Nil) {
		return 0
	}
	Ok(h.t, err)
	now, err := h.rdb.Time(ctx).Result()
	Ok(h.t, err)
	return time.UnixMilli(int64(expiry)).Sub(now)
}

// deliveryRecords counts the de-duplication's records.
func (h *harness) deliveryRecords() int64 {
	h.t.Helper()
	ctx, cancel := h.rctx()
	defer cancel()
	n, err := h.rdb.ZCard(ctx, deliveriesKey).Result()
	Ok(h.t, err)
	return n
}

// rctx bounds one Redis call.
func (h *harness) rctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(h.ctx, 5*time.Second)
}

// lockHolder returns the pull holding the project lock, or 0 when it is free.
func (h *harness) lockHolder() int {
	h.t.Helper()
	n, err := h.holder(lockKey)
	Ok(h.t, err)
	return n
}

func (h *harness) holder(key string) (int, error) {
	ctx, cancel := h.rctx()
	defer cancel()
	return e2ekit.LockHolder(ctx, h.rdb, key)
}

// waitNoLock waits until the project lock is gone from Redis.
func (h *harness) waitNoLock() {
	h.t.Helper()
	h.eventually(lockKey+" to leave Redis", func() (bool, string) {
		n, err := h.holder(lockKey)
		return err == nil && n == 0, fmt.Sprintf("holder #%d, err %v", n, err)
	})
}

// exists says whether key is in Redis.
func (h *harness) exists(key string) bool {
	h.t.Helper()
	ctx, cancel := h.rctx()
	defer cancel()
	n, err := h.rdb.Exists(ctx, key).Result()
	Ok(h.t, err)
	return n == 1
}

// keys returns every key in Redis (the test Redis is small).
func (h *harness) keys() []string {
	h.t.Helper()
	keys, err := h.scanKeys("*")
	Ok(h.t, err)
	return keys
}

func (h *harness) scanKeys(pattern string) ([]string, error) {
	ctx, cancel := h.rctx()
	defer cancel()
	return h.scan(ctx, pattern)
}

func (h *harness) scan(ctx context.Context, pattern string) ([]string, error) {
	var keys []string
	iter := h.rdb.Scan(ctx, 0, pattern, 100).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	sort.Strings(keys)
	return keys, iter.Err()
}

// describeRedis lists every key with its type, TTL and a short value, for
// failure output. It never fails the test, and works after the test's
// deadline.
func (h *harness) describeRedis() string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	keys, err := h.scan(ctx, "*")
	if err != nil {
		return fmt.Sprintf("(cannot scan: %s)\n", err)
	}
	var b strings.Builder
	for _, k := range keys {
		typ := h.rdb.Type(ctx, k).Val()
		ttl := h.rdb.PTTL(ctx, k).Val()
		var v string
		switch typ {
		case "string":
			v = h.rdb.Get(ctx, k).Val()
		case "set":
			v = fmt.Sprint(h.rdb.SMembers(ctx, k).Val())
		case "zset":
			v = fmt.Sprint(h.rdb.ZRangeWithScores(ctx, k, 0, -1).Val())
		case "hash":
			v = fmt.Sprint(h.rdb.HGetAll(ctx, k).Val())
		}
		if len(v) > 300 {
			v = v[:300] + "..."
		}
		fmt.Fprintf(&b, "%s (%s, ttl %s): %s\n", k, typ, ttl, v)
	}
	return b.String()
}

// checkRedisConsistent scans Redis and fails the test unless every key is
// accounted for: a lock with upstream's JSON, a related key (waiters, release
// record) of a live lock, the release times of locks, an index of lock keys
// that holds every live lock (the global index may name locks released since,
// the per-pull index locks the pull only asked for), the global apply lock,
// upstream's pull status, or the webhook delivery records. No key but the
// locks, the indexes and the pull status may live forever.
func (h *harness) checkRedisConsistent() {
	h.t.Helper()
	h.checkRedisConsistentWith(nil)
}

// checkRedisConsistentWith is checkRedisConsistent for a fleet in which some
// replicas run upstream's own Redis locking (--enhanced-locking-enabled=false).
// A lock held by one of upstreamPulls was written by such a replica, whose
// read-then-write sets the lock key and nothing else: it may lack the
// acquisition token and its entries in the global and per-pull indexes. Every other check
// applies to it, and all of them to every other lock.
func (h *harness) checkRedisConsistentWith(upstreamPulls []int) {
	h.t.Helper()
	ctx, cancel := h.rctx()
	defer cancel()
	keys := h.keys()
	live := map[string]bool{}
	for _, k := range keys {
		if strings.HasPrefix(k, "pr/") {
			live[k] = true
		}
	}
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	ttl := func(k string) time.Duration { return h.rdb.PTTL(ctx, k).Val() }
	membersStartWith := func(set, prefix, what, want string) {
		for _, m := range h.rdb.SMembers(ctx, set).Val() {
			if !strings.HasPrefix(m, prefix) {
				bad("%s %s names %s, which is not %s", what, set, m, want)
			}
		}
	}
	byUpstream := func(lock string) bool {
		n, err := h.holder(lock)
		return err == nil && slices.Contains(upstreamPulls, n)
	}

	for _, k := range keys {
		switch {
		case strings.HasPrefix(k, "pr/"):
			if _, err := h.holder(k); err != nil {
				bad("%s", err)
			}
			// Locks taken through the enhanced scripts carry their token.
			if v := h.rdb.Get(ctx, k).Val(); !byUpstream(k) && !strings.Contains(v, acquisitionToken) {
				bad("lock %s has no acquisition token: %s", k, v)
			}
		case k == globalIndex:
			// Checked below, also when it is missing.
		case k == shardSet:
			for _, m := range h.rdb.SMembers(ctx, k).Val() {
				if m != globalIndex {
					bad("shard set %s names %s; a single Redis has one shard, %s", k, m, globalIndex)
				}
			}
		case strings.HasPrefix(k, "pull{"):
			membersStartWith(k, "pr/", "pull index", "a lock key")
		case strings.HasPrefix(k, "pullclosing{"):
			// Only exists while an UnlockByPull runs, or after one failed.
			bad("%s is left over from an UnlockByPull that did not finish", k)
		case k == releaseTimes:
			// One field per lock key ever released, kept so that a stale
			// copy of a lock is never imported back.
			for field := range h.rdb.HGetAll(ctx, k).Val() {
				if !strings.HasPrefix(field, "pr/") {
					bad("release times %s name %s, which is not a lock key", k, field)
				}
			}
		case strings.HasPrefix(k, "w{"), strings.HasPrefix(k, "wd{"), strings.HasPrefix(k, "wv{"), strings.HasPrefix(k, "qm{"):
			if lock := relatedLock(k); !live[lock] {
				bad("%s belongs to %s, which is not locked (orphan)", k, lock)
			}
		case strings.HasPrefix(k, "u{"):
			if d := ttl(k); d <= 0 {
				bad("release record %s does not expire (ttl %s)", k, d)
			}
		case k == queuesKey:
			// May name locks whose entries left since, until a sweep prunes
			// them (backends/redis_queue.go); the entries themselves, in
			// w{…} and qm{…}, belong to live locks, as checked above.
			membersStartWith(k, "pr/", "queues index", "a lock key")
		case strings.HasPrefix(k, "cmdlease{"), strings.HasPrefix(k, "cmdwait{"), strings.HasPrefix(k, "cmdwaitlive{"):
			// A pull's command lease and the commands waiting for it, while
			// a command of the pull runs (the queue's re-plans included). A
			// command that ended since the scan took its keys along (PTTL
			// answers -2 for a missing key).
			if d := ttl(k); d <= 0 && d != -2 {
				bad("command lease key %s does not expire (ttl %s)", k, d)
			}
		case k == commandLeasesKey:
			membersStartWith(k, "cmdlease{", "command lease list", "a command lease key")
		case k == outboxKey, k == outboxNoticesKey:
			// Notices on their way to their pulls; the queue tests check
			// that they are delivered.
		case strings.HasPrefix(k, "claim:"):
			// A replica's claim of a deadlock it acts on: it lapses, so a
			// deadlock that forms again is acted on again.
			if d := ttl(k); d == -1 {
				bad("claim %s does not expire", k)
			}
		case k == applyLockKey:
		case k == deliveriesKey:
			if d := ttl(k); d <= 0 || d > deliveryTTL {
				bad("delivery records %s expire in %s, want at most %s", k, d, deliveryTTL)
			}
			now := h.rdb.Time(ctx).Val()
			for _, z := range h.rdb.ZRangeWithScores(ctx, k, 0, -1).Val() {
				member, _ := z.Member.(string)
				if b, err := hex.DecodeString(member); err != nil || len(b) != 16 {
					bad("delivery record %q in %s is not a 128-bit payload hash", member, k)
				}
				// An expired record may stay until the next claim drops it.
				if left := time.UnixMilli(int64(z.Score)).Sub(now); left > deliveryTTL {
					bad("delivery record %s expires in %s, after %s", member, left, deliveryTTL)
				}
			}
		case strings.Contains(k, "::"+repoFull+"::"):
			// Upstream's pull status: {vcs hostname}::{repo}::{pull}.
		default:
			bad("unexpected key %s", k)
		}
	}
	// The global index (what /api/locks lists) holds every live lock. It may
	// also name locks released since: a release leaves the entry, and List
	// drops the entries of locks that are gone.
	indexed := h.rdb.SMembers(ctx, globalIndex).Val()
	for _, m := range indexed {
		if !strings.HasPrefix(m, "pr/") {
			bad("global index %s names %s, which is not a lock key", globalIndex, m)
		}
	}
	for l := range live {
		if !byUpstream(l) && !slices.Contains(indexed, l) {
			bad("lock %s is missing from the global index %s %v", l, globalIndex, indexed)
		}
	}
	// Every pull holding a lock has it in its index, or `atlantis unlock` and
	// closing the pull would not release it.
	for l := range live {
		n, err := h.holder(l)
		if err == nil && n > 0 && !byUpstream(l) && !h.rdb.SIsMember(ctx, pullIndexKey(n), l).Val() {
			bad("lock %s held by #%d is missing from %s", l, n, pullIndexKey(n))
		}
	}
	if len(problems) > 0 {
		h.t.Fatalf("Redis is inconsistent:\n  %s\nkeys:\n%s", strings.Join(problems, "\n  "), h.describeRedis())
	}
}

// relatedLock is the lock key a related key such as w{pr/a/b/dir/default/}
// belongs to. The test's names contain no braces, so the key is the tag.
func relatedLock(key string) string {
	open := strings.IndexByte(key, '{')
	end := strings.LastIndexByte(key, '}')
	if open < 0 || end < open {
		return ""
	}
	return key[open+1 : end]
}
