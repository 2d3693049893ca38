package backends

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/command"

	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// oddProjects have names that break naive hash tags: braces anywhere, empty
// tags, unclosed tags, separators and non-ASCII text.
var oddProjects = []struct {
	project   models.Project
	workspace string
}{
	{models.Project{RepoFullName: "org/repo", Path: "."}, "default"},
	{models.Project{RepoFullName: "org/re{po}", Path: "dir"}, "default"},
	{models.Project{RepoFullName: "org/repo", Path: "a}b"}, "ws"},
	{models.Project{RepoFullName: "org/{}", Path: "x"}, "}{"},
	{models.Project{RepoFullName: "org/repo{", Path: "dir"}, "default"},
	{models.Project{RepoFullName: "}org/repo", Path: "{a}", ProjectName: "p"}, "w"},
	{models.Project{RepoFullName: "grüppe/sub group/ré{po}", Path: "{x}/a::b", ProjectName: "naïve {p}"}, "ws{1}::}"},
	{models.Project{RepoFullName: "org/repo", Path: "dir"}, "{"},
}

func TestRelatedKeysShareTheLockKeySlot(t *testing.T) {
	for _, prefix := range []string{"", "team1:", "a}b:", "{atlantis}:", "x{y}z{"} {
		Ok(t, ValidateKeyPrefix(prefix))
		ks := keyspace{prefix: prefix, cluster: true}
		seen := map[string]string{}
		for _, p := range oddProjects {
			k := ks.forProject(p.project, p.workspace)
			slot := keySlot(k.lock)
			for _, related := range k.script()[1:] {
				Equals(t, slot, keySlot(related))
				if related == k.shard || related == k.releaseTimes || related == k.outbox || related == k.notices || related == k.queues {
					continue // shared by the locks of a slot, by design
				}
				if other, dup := seen[related]; dup {
					t.Fatalf("key %q derived from both %q and %q", related, other, k.lock)
				}
				seen[related] = k.lock
			}
			index, closing := ks.pull(p.project.RepoFullName, 3)
			Equals(t, keySlot(index), keySlot(closing))
			// The scripts over a whole slot find its keys from the shard.
			tag, ok := ks.shardTag(k.shard)
			Assert(t, ok, "shard %q of lock %q is not read back as one", k.shard, k.lock)
			Equals(t, k.outbox, ks.inSlot("outbox", tag))
			Equals(t, k.notices, ks.inSlot("outbox:notices", tag))
			Equals(t, k.queues, ks.inSlot("queues", tag))
		}
	}
}

func TestOrdinaryNamesKeepReadableKeys(t *testing.T) {
	k := keyspace{}.forProject(models.Project{RepoFullName: "org/repo", Path: "dir"}, "default")
	Equals(t, "pr/org/repo/dir/default/", k.lock)
	Equals(t, "w{pr/org/repo/dir/default/}", k.queue)
	index, _ := keyspace{}.pull("org/repo", 12)
	Equals(t, "pull{org/repo::12}", index)
}

func TestValidateKeyPrefix(t *testing.T) {
	cases := []struct {
		prefix string
		valid  bool
	}{
		{"", true},
		{"atlantis:", true},
		{"{atlantis}:", true},
		{"a}b", true},
		{"x{", false},
		{"{}x", false},
		{"a{b", false},
		// Upstream's List scans "pr*" and decodes every match as a lock.
		{"pr", false},
		{"prod:", false},
		{"pr/", false},
		{"p", true},
		{"PROD:", true}, // SCAN MATCH is case-sensitive
	}
	for _, c := range cases {
		err := ValidateKeyPrefix(c.prefix)
		Assert(t, (err == nil) == c.valid, "prefix %q: valid=%v, err=%v", c.prefix, c.valid, err)
	}
}

// TestNoKeyMatchesUpstreamScans: upstream's Redis database scans "pr*" for
// its List and decodes every match as a lock, so with any valid prefix no key
// of ours but a lock key may match it, in either key layout.
func TestNoKeyMatchesUpstreamScans(t *testing.T) {
	for _, prefix := range []string{"", "p", "x:", "{atlantis}:", "PR"} {
		Ok(t, ValidateKeyPrefix(prefix))
		for _, cluster := range []bool{false, true} {
			ks := keyspace{prefix: prefix, cluster: cluster}
			for _, p := range oddProjects {
				k := ks.forProject(p.project, p.workspace)
				index, closing := ks.pull(p.project.RepoFullName, 7)
				keys := append(k.script(), k.channel, index, closing, ks.shards(), ks.command(command.Apply), ks.rollbackSnapshot("id"), ks.claim("deadlock:notify:id"))
				for _, key := range keys {
					matches := strings.HasPrefix(key, upstreamScanPrefix)
					isUpstreamLock := prefix == "" && key == k.lock
					Assert(t, matches == isUpstreamLock, "prefix %q: key %q matches upstream's %q*: %v", prefix, key, upstreamScanPrefix, matches)
				}
			}
		}
	}
}

func TestSlotTagsAreBraceFreeAndExact(t *testing.T) {
	for slot := 0; slot < clusterSlots; slot++ {
		tag := slotTag(slot)
		Equals(t, slot, keySlot(tag))
		Equals(t, tag, hashTag("x{"+tag+"}y"))
	}
}

// TestKeySlotMatchesRedisCluster checks our CRC16 and hash tag rules against
// CLUSTER KEYSLOT, and that every key of a lock script is accepted by a real
// cluster as one slot.
func TestKeySlotMatchesRedisCluster(t *testing.T) {
	client := redistest.StartCluster(t).Client(t)
	ctx := context.Background()
	ks := keyspace{cluster: true}
	for _, p := range oddProjects {
		k := ks.forProject(p.project, p.workspace)
		for _, key := range append(k.script(), k.channel) {
			want, err := client.ClusterKeySlot(ctx, key).Result()
			Ok(t, err)
			Equals(t, int(want), keySlot(key))
		}
		// A multi-key command across slots fails with CROSSSLOT.
		Ok(t, client.Exists(ctx, k.script()...).Err())
	}
}

// TestForeignShardMembersAreSkipped: the shard set is read back from Redis,
// where an operator or another version may have added anything. A member
// that is not one of our shard keys names no slot: every reader skips it,
// and still finds the locks and queues of the real shards.
func TestForeignShardMembersAreSkipped(t *testing.T) {
	ctx := context.Background()
	client := redistest.StartCluster(t).Client(t)
	r := newTestRedis(t, client, RedisOptions{})
	holder := enhancedtest.NewLock(testRepo, "dir", "default", "", 1)
	mustLock(t, r, holder)
	_, err := r.Enqueue(ctx, queueReq(enhancedtest.NewLock(testRepo, "dir", "default", "", 2), time.Hour))
	Ok(t, err)
	lockKey := r.keys.forProject(holder.Project, holder.Workspace).lock
	Ok(t, client.SAdd(ctx, r.keys.shards(), "", "x", "locks", "locks{", "locks{}", "locks{a}b", lockKey).Err())

	locks, err := r.List(ctx)
	Ok(t, err)
	Equals(t, 1, len(locks))
	queues, err := r.Queues(ctx)
	Ok(t, err)
	Equals(t, 1, len(queues))
	_, err = r.ClaimNotices(ctx, time.Second, 10)
	Ok(t, err)
	_, err = r.Sweep(ctx)
	Ok(t, err)
}

// An index shard that names a key of another slot (an operator's SADD)
// leaves that member out, instead of failing the whole List with CROSSSLOT.
func TestForeignIndexMembersAreSkipped(t *testing.T) {
	ctx := context.Background()
	client := redistest.StartCluster(t).Client(t)
	r := newTestRedis(t, client, RedisOptions{})
	held := []models.ProjectLock{
		enhancedtest.NewLock(testRepo, "a", "default", "", 1),
		enhancedtest.NewLock(testRepo, "b", "default", "", 2),
	}
	for _, l := range held {
		mustLock(t, r, l)
	}
	a, b := r.keys.forProject(held[0].Project, "default"), r.keys.forProject(held[1].Project, "default")
	Assert(t, a.shard != b.shard, "the test needs locks in two slots")
	Ok(t, client.SAdd(ctx, a.shard, b.lock, "pr/elsewhere/x/default/").Err())

	locks, err := r.List(ctx)
	Ok(t, err)
	Equals(t, 2, len(locks))
}
