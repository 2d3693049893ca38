package backends

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// FuzzKeyspace builds every key of two projects and two pulls from arbitrary
// names and prefixes and checks, against real Redis:
//   - an invalid prefix is refused with an error that quotes it and gives
//     an example of a valid one;
//   - with a valid one, every key a lock's scripts touch is in the lock key's
//     cluster slot (CLUSTER KEYSLOT of a real cluster), and so are a pull's
//     index keys and its command lease keys among themselves;
//   - the slot-wide keys found back from an index shard are the lock's own,
//     and any other string read back as a shard is refused or is the shard
//     of its own slot;
//   - SCAN with the lock pattern finds exactly the lock keys (a real SCAN
//     over every key of both projects);
//   - two different lock keys, or two different pulls, share no key, and
//     upstream's lock key tells projects apart wherever it can (below).
func FuzzKeyspace(f *testing.F) {
	for _, prefix := range []string{"", "team1:", "a}b:", "{atlantis}:", "x{y}z{", "pr", "x{", "{}x", "a*[b]?\\:"} {
		for i, p := range oddProjects {
			q := oddProjects[(i+1)%len(oddProjects)]
			f.Add(prefix, i%2 == 0, p.project.RepoFullName, p.project.Path, p.workspace, p.project.ProjectName,
				q.project.RepoFullName, q.project.Path, q.workspace, q.project.ProjectName, 1, i)
		}
	}
	// Upstream's key joins the names with "/": these two share it.
	f.Add("", true, "org/repo", "a/b", "default", "", "org/repo/a", "b", "default", "", 1, 1)
	f.Add("", false, "org/repo", "x", "w", "a/b", "org/repo", "x/w", "a", "b", 7, 7)
	f.Add("", false, "a::1", "x", "default", "", "a", "x", "default", "", 2, -1)

	ctx := context.Background()
	slots := redistest.StartCluster(f).Nodes[0].Client(f)
	scan := redistest.Start(f).Client(f)

	f.Fuzz(func(t *testing.T, prefix string, cluster bool,
		repoA, pathA, wsA, projectA, repoB, pathB, wsB, projectB string, pullA, pullB int) {
		if err := ValidateKeyPrefix(prefix); err != nil {
			ErrContains(t, fmt.Sprintf("key prefix %q", prefix), err)
			ErrContains(t, "e.g.", err)
			return
		}
		ks := keyspace{prefix: prefix, cluster: cluster}
		a := fuzzedProject{models.Project{RepoFullName: repoA, Path: pathA, ProjectName: projectA}, wsA, pullA}
		b := fuzzedProject{models.Project{RepoFullName: repoB, Path: pathB, ProjectName: projectB}, wsB, pullB}
		keysA, keysB := a.keys(ks), b.keys(ks)

		for _, k := range []fuzzedKeys{keysA, keysB} {
			if cluster {
				assertOneSlot(t, ctx, slots, append(k.lock.script(), k.lock.channel))
				assertOneSlot(t, ctx, slots, k.pull)
				assertOneSlot(t, ctx, slots, k.commandLease)
			}
			tag, ok := ks.shardTag(k.lock.shard)
			Assert(t, ok, "shard %q of lock %q is not read back as one", k.lock.shard, k.lock.lock)
			Equals(t, k.lock.outbox, ks.inSlot("outbox", tag))
			Equals(t, k.lock.notices, ks.inSlot("outbox:notices", tag))
			Equals(t, k.lock.queues, ks.inSlot("queues", tag))
			Equals(t, k.lock.releaseTimes, ks.inSlot("locks:released", tag))
			for _, key := range k.all() {
				isLock := key == k.lock.lock
				Assert(t, !strings.HasPrefix(key, upstreamScanPrefix) || (isLock && prefix == ""),
					"key %q would be read as a lock by upstream's scan of %q*", key, upstreamScanPrefix)
			}
		}
		// Any string may be read back from the shard set: one taken for a
		// shard is exactly the shard of its slot.
		for _, stored := range []string{repoB, pathB, prefix + "locks" + projectB} {
			if tag, ok := ks.shardTag(stored); ok {
				Equals(t, stored, ks.inSlot("locks", tag))
				Equals(t, stored, ks.shard(stored))
			}
		}
		Equals(t, sortedSet(keysA.lock.lock, keysB.lock.lock), scanMatches(t, ctx, scan, ks.lockPattern(), append(keysA.all(), keysB.all()...)))

		// A key names one lock or one pull, and one kind of key for it.
		owners := map[string]string{}
		claim := func(key, owner string) {
			if other, taken := owners[key]; taken && other != owner {
				t.Fatalf("key %q names both %s and %s", key, other, owner)
			}
			owners[key] = owner
		}
		for _, k := range []fuzzedKeys{keysA, keysB} {
			for kind, key := range k.perLock() {
				claim(key, fmt.Sprintf("%s of lock %q", kind, k.lock.lock))
			}
			for kind, key := range k.perPull() {
				claim(key, fmt.Sprintf("%s of pull %q", kind, k.pullName))
			}
			for kind, key := range k.perSlot(ks) {
				claim(key, kind)
			}
		}

		// Upstream's key joins repo, path, workspace and project name with
		// "/". Workspaces cannot hold a "/" (Terraform refuses it); where
		// project names hold none either and both repos have as many "/",
		// the key is unambiguous: different projects never share it.
		if (a.project != b.project || a.workspace != b.workspace) && unambiguous(a, b) {
			Assert(t, keysA.lock.lock != keysB.lock.lock,
				"projects %+v in %q and %+v in %q share the lock key %q", a.project, a.workspace, b.project, b.workspace, keysA.lock.lock)
		}
	})
}

type fuzzedProject struct {
	project   models.Project
	workspace string
	pull      int
}

// unambiguous says whether upstream's lock key tells a and b apart.
func unambiguous(a, b fuzzedProject) bool {
	for _, name := range []string{a.workspace, b.workspace, a.project.ProjectName, b.project.ProjectName} {
		if strings.Contains(name, "/") {
			return false
		}
	}
	return strings.Count(a.project.RepoFullName, "/") == strings.Count(b.project.RepoFullName, "/")
}

// fuzzedKeys are the keys of one project's lock and of one pull.
type fuzzedKeys struct {
	lock         lockKeys
	pullName     string
	pull         []string
	commandLease []string
}

func (p fuzzedProject) keys(ks keyspace) fuzzedKeys {
	index, closing := ks.pull(p.project.RepoFullName, p.pull)
	return fuzzedKeys{
		lock:         ks.forProject(p.project, p.workspace),
		pullName:     fmt.Sprintf("%s#%d", p.project.RepoFullName, p.pull),
		pull:         []string{index, closing},
		commandLease: ks.commandLease(p.project.RepoFullName, p.pull),
	}
}

// perLock are the keys that belong to this lock alone, by kind.
func (k fuzzedKeys) perLock() map[string]string {
	return map[string]string{
		"lock": k.lock.lock, "queue": k.lock.queue, "deadlines": k.lock.deadlines, "values": k.lock.values,
		"released": k.lock.released, "channel": k.lock.channel, "entries": k.lock.entries,
	}
}

// perPull are the keys that belong to this pull alone, by kind.
func (k fuzzedKeys) perPull() map[string]string {
	return map[string]string{
		"index": k.pull[0], "closing": k.pull[1],
		"cmdlease": k.commandLease[0], "cmdwait": k.commandLease[1], "cmdwaitlive": k.commandLease[2],
	}
}

// perSlot are the keys every lock of this lock's slot shares, and the
// fleet-wide ones, named by what they are.
func (k fuzzedKeys) perSlot(ks keyspace) map[string]string {
	tag := strings.TrimPrefix(k.lock.shard, ks.prefix+"locks")
	return map[string]string{
		k.lock.shard: "shard" + tag, k.lock.releaseTimes: "release times" + tag, k.lock.outbox: "outbox" + tag,
		k.lock.notices: "notices" + tag, k.lock.queues: "queues" + tag,
		ks.shards(): "shards", ks.commandLeases(): "command leases",
	}
}

func (k fuzzedKeys) all() []string {
	keys := append(k.lock.script(), k.lock.channel)
	keys = append(keys, k.pull...)
	return append(keys, k.commandLease...)
}

// assertOneSlot checks that a real cluster puts every key in one slot.
func assertOneSlot(t *testing.T, ctx context.Context, node *redis.Client, keys []string) {
	t.Helper()
	cmds, err := node.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, key := range keys {
			p.ClusterKeySlot(ctx, key)
		}
		return nil
	})
	Ok(t, err)
	for i, cmd := range cmds {
		slot := cmd.(*redis.IntCmd).Val()
		Equals(t, int64(keySlot(keys[i])), slot)
		Assert(t, slot == cmds[0].(*redis.IntCmd).Val(), "key %q is in slot %d, key %q in slot %d", keys[i], slot, keys[0], cmds[0].(*redis.IntCmd).Val())
	}
}

// scanMatches stores keys in an empty database and returns what SCAN MATCH
// pattern finds among them.
func scanMatches(t *testing.T, ctx context.Context, client *redis.Client, pattern string, keys []string) []string {
	t.Helper()
	_, err := client.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.FlushDB(ctx)
		for _, key := range keys {
			p.Set(ctx, key, "", 0)
		}
		return nil
	})
	Ok(t, err)
	found := map[string]bool{}
	for cursor := uint64(0); ; {
		page, next, err := client.Scan(ctx, cursor, pattern, 1000).Result()
		Ok(t, err)
		for _, key := range page {
			found[key] = true
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	return slices.Sorted(maps.Keys(found))
}

func sortedSet(keys ...string) []string {
	slices.Sort(keys)
	return slices.Compact(keys)
}
