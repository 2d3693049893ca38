package backends

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// The outbox holds the notice of every hand-over and expiry of a durable
// entry until a replica has delivered it: per slot, a sorted set of notice
// ids by the time each is next due, and a hash of the notices with their
// claims and the delivery steps done. The script that hands a lock over
// writes its notice in the same step (lua/helpers.lua), so a replica that
// dies right after a release loses no notice; a claim leases a notice, so
// one replica delivers it at a time and another takes over when the lease
// ends; the steps done let the next claim skip what the last one finished.

// ClaimNotices implements enhanced.QueueBackend.
func (r *Redis) ClaimNotices(ctx context.Context, lease time.Duration, max int) ([]enhanced.QueueNotice, error) {
	shards, err := r.slotShards(ctx)
	if err != nil {
		return nil, err
	}
	claim := newToken()
	var notices []enhanced.QueueNotice
	for _, shard := range shards {
		if len(notices) >= max {
			break
		}
		outbox, notes := r.keys.inShardSlot("outbox", shard), r.keys.inShardSlot("outbox:notices", shard)
		vals, err := outboxClaimScript.Run(ctx, r.client, []string{outbox, notes}, lease.Milliseconds(), max-len(notices), claim).StringSlice()
		if err != nil {
			return notices, redisError("claiming queue notices", err)
		}
		for i := 0; i+2 < len(vals); i += 3 {
			n, err := r.parseNotice(vals[i], vals[i+1], vals[i+2], claim)
			if err != nil {
				// Unreadable: nobody could deliver it. Say so and drop it
				// rather than claim it forever.
				r.logger.Err("dropping queue notice %q: %s", vals[i], err)
				_ = outboxAckScript.Run(ctx, r.client, []string{outbox, notes}, vals[i], claim).Err()
				continue
			}
			notices = append(notices, n)
		}
	}
	return notices, nil
}

// parseNotice reads a notice as lua/helpers.lua's notify writes it.
func (r *Redis) parseNotice(id, payload, done, claim string) (enhanced.QueueNotice, error) {
	f := strings.SplitN(payload, "\n", 7)
	if len(f) != 7 {
		return enhanced.QueueNotice{}, fmt.Errorf("malformed notice %q", payload)
	}
	kind, lockKey, token, meta, deadline, at, value := f[0], f[1], f[2], f[3], f[4], f[5], f[6]
	k := r.keys.forLockKey(lockKey)
	entry, err := r.parseEntry(k, token, 0, deadline, value, meta)
	if err != nil {
		return enhanced.QueueNotice{}, err
	}
	atMs, err := strconv.ParseInt(at, 10, 64)
	if err != nil {
		return enhanced.QueueNotice{}, fmt.Errorf("notice time %q", at)
	}
	n := enhanced.QueueNotice{ID: id, Kind: enhanced.NoticeKind(kind), Entry: entry, At: time.UnixMilli(atMs), Claim: claim}
	for _, step := range strings.Split(strings.TrimSuffix(done, "\n"), "\n") {
		if step != "" {
			n.Done = append(n.Done, enhanced.NoticeStep(step))
		}
	}
	return n, nil
}

// RenewNotice implements enhanced.QueueBackend.
func (r *Redis) RenewNotice(ctx context.Context, n enhanced.QueueNotice, lease time.Duration) error {
	return r.updateNotice(ctx, outboxMarkScript, n, "", lease.Milliseconds())
}

// MarkNotice implements enhanced.QueueBackend.
func (r *Redis) MarkNotice(ctx context.Context, n enhanced.QueueNotice, step enhanced.NoticeStep, lease time.Duration) error {
	if step == "" {
		return fmt.Errorf("marking queue notice %q: no step given", n.ID)
	}
	return r.updateNotice(ctx, outboxMarkScript, n, string(step), lease.Milliseconds())
}

// AckNotice implements enhanced.QueueBackend.
func (r *Redis) AckNotice(ctx context.Context, n enhanced.QueueNotice) error {
	return r.updateNotice(ctx, outboxAckScript, n)
}

// updateNotice runs one of the outbox scripts that act for n's claim only.
func (r *Redis) updateNotice(ctx context.Context, script *redis.Script, n enhanced.QueueNotice, args ...any) error {
	k := r.keys.forProject(n.Entry.Lock.Project, n.Entry.Lock.Workspace)
	ok, err := script.Run(ctx, r.client, []string{k.outbox, k.notices}, append([]any{n.ID, n.Claim}, args...)...).Int()
	if err != nil {
		return redisError(fmt.Sprintf("updating queue notice %q", n.ID), err)
	}
	if ok == 0 {
		return fmt.Errorf("queue notice %q: %w", n.ID, enhanced.ErrNoticeLost)
	}
	return nil
}

// WatchNotices signals on the returned channel whenever a notice is written
// by any replica, and after every (re)subscription so that a notice written
// while this replica was disconnected is claimed at once too, until ctx is
// done. A notice is delivered at once rather than at the next poll.
func (r *Redis) WatchNotices(ctx context.Context) <-chan struct{} {
	sub := r.client.PSubscribe(ctx, globEscape(r.keys.prefix+"outbox")+"*")
	go func() {
		<-ctx.Done()
		_ = sub.Close()
	}()
	return wakeups(ctx, sub)
}
