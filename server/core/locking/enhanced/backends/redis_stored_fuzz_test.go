package backends

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"
)

// The fuzz targets below feed arbitrary stored values to the real scripts
// through every backend method that reads them, on one redis-server per fuzz
// process, and check TestScriptsSurviveHostileStoredValues's property: a
// script does its whole job or writes nothing, a method succeeds or returns
// enhanced.ErrCorruptLock naming the key, a failed release released nothing,
// nothing panics. Run one with
// go test -run='^$' -fuzz='^FuzzRedisStoredLock$' -fuzztime=10s ./server/core/locking/enhanced/backends

// FuzzRedisStoredLock stores value at the lock key of a held lock with a
// queue.
func FuzzRedisStoredLock(f *testing.F) {
	rig := newHostileRig(f)
	f.Add(rig.state.holderValue)
	for _, v := range hostileLockValues(rig.state.holderValue) {
		f.Add(v)
	}
	k := rig.state.k
	f.Fuzz(func(t *testing.T, value string) {
		rig.checkAll(t, setString(k.lock, value), k.lock)
	})
}

// FuzzRedisQueueEntry stores the head durable entry's metadata, deadline and
// lock value.
func FuzzRedisQueueEntry(f *testing.F) {
	rig := newHostileRig(f)
	s := rig.state
	meta, err := rig.admin.HGet(context.Background(), s.k.entries, s.entryToken).Result()
	if err != nil {
		f.Fatal(err)
	}
	deadline, err := rig.admin.HGet(context.Background(), s.k.deadlines, s.entryToken).Result()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(meta, deadline, s.entryValue)
	for _, m := range []string{"garbage", "", "|||", "2|x|org/repo#2", "2|1700000000000|org/repo#2\nx", "99999999999999999999|1|org/repo#2"} {
		f.Add(m, deadline, s.entryValue)
	}
	for _, d := range []string{"x", "", "nan", "1e400", "-1", "0x10"} {
		f.Add(meta, d, s.entryValue)
	}
	for _, v := range hostileLockValues(s.entryValue) {
		f.Add(meta, deadline, v)
	}
	k := s.k
	f.Fuzz(func(t *testing.T, meta, deadline, value string) {
		rig.checkAll(t, func(ctx context.Context, c redis.Cmdable) error {
			_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
				p.HSet(ctx, k.entries, s.entryToken, meta)
				p.HSet(ctx, k.deadlines, s.entryToken, deadline)
				p.HSet(ctx, k.values, s.entryToken, value)
				return nil
			})
			return err
		}, k.entries, k.deadlines, k.values)
	})
}

// FuzzRedisNotice stores a notice's payload and its delivery steps done.
func FuzzRedisNotice(f *testing.F) {
	rig := newHostileRig(f)
	s := rig.state
	payload, err := rig.admin.HGet(context.Background(), s.k.notices, s.noticeID).Result()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(payload, "")
	f.Add(payload, "commented\n")
	f.Add(payload, "\n\n|x")
	for _, p := range hostileNotices(s) {
		f.Add(p, "")
	}
	k := s.k
	f.Fuzz(func(t *testing.T, payload, done string) {
		rig.checkAll(t, func(ctx context.Context, c redis.Cmdable) error {
			return c.HSet(ctx, k.notices, s.noticeID, payload, "d:"+s.noticeID, done).Err()
		}, k.notices)
	})
}

// checkAll checks every lock method (all but the command lease's) against the
// state set leaves.
func (rig *hostileRig) checkAll(t *testing.T, set func(context.Context, redis.Cmdable) error, keys ...string) {
	for _, op := range hostileOps() {
		if !op.lease {
			rig.check(t, op, set, keys...)
		}
	}
}
