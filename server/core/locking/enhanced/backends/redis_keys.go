package backends

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"
)

// Key layout in Redis. With an empty KeyPrefix the lock and command lock keys
// are exactly upstream's, so upstream replicas and ours see the same locks:
//
//	pr/{repo}/{path}/{workspace}/{project}   lock: upstream's JSON of models.ProjectLock plus the
//	                                         acquisition token (redis_value.go)
//	global/{command}/lock                    command lock: JSON of command.Lock (upstream's key and value)
//	w{T}S                                    waiters: ZSET of tokens, ordered by priority then arrival
//	wd{T}S                                   waiters' liveness deadlines: HASH token -> unix ms
//	wv{T}S                                   waiters' lock values: HASH token -> value to install on handoff
//	qm{T}S                                   durable queue entries: HASH token -> metadata, and pull -> token
//	u{T}S                                    last release of this lock, to answer a retried release
//	n{T}S                                    pub/sub channel announcing the token a lock was handed to
//	locks / locks{slot tag}                  global index shard: SET of lock keys (one per cluster slot)
//	locks:released / locks:released{tag}     when each lock of the slot was last released: HASH key -> unix us
//	locks:shards                             SET of the shard keys above, only ever grows
//	queues / queues{slot tag}                SET of the slot's lock keys with durable queue entries
//	outbox / outbox{slot tag}                notices of hand-overs and expiries to deliver: ZSET id -> due
//	                                         unix ms; also the channel that announces them
//	outbox:notices / outbox:notices{tag}     the notices: HASH id -> notice, and their claims and steps
//	pull{repo::num}                          per-pull index: SET of lock keys the pull asked for
//	pullclosing{repo::num}                   per-pull index entries taken by a running UnlockByPull
//	cmdlease{repo::num}                      the pull's command lease: HASH token, replica, command, since,
//	                                         repo, pull; expires unless renewed
//	cmdwait{repo::num}                       commands waiting for it: ZSET token -> first ask, Redis us
//	cmdwaitlive{repo::num}                   their liveness deadlines: HASH token -> Redis ms
//	cmdleases                                SET of command lease keys, for listing only (pruned on read)
//	claim:{name}                             a replica's claim of name, e.g. a deadlock it acts on: expires
//	atlantis:enhanced:rollback-snapshot:{id} what Redis held when a rollback began (redis_rollback.go)
//
// {T}S is how a related key lands in its lock key's cluster slot. Redis hashes
// only the part between the first "{" and the next "}" when that part is not
// empty, so a lock key containing braces (repo, path, workspace and project
// names are user data) may hash by a fragment of itself. T is therefore the
// lock key's effective hash tag, and S repeats the lock key when T alone would
// not identify it. When the effective tag itself contains a "}" (a key without
// a valid tag but with a closing brace), T is instead a brace-free string
// chosen from a fixed table to hash to the same slot. For ordinary names T is
// the lock key and S is empty: w{pr/org/repo/dir/default/}.
//
// A KeyPrefix is prepended to every key. It switches off compatibility with
// upstream replicas, whose keys are never prefixed.
//
// Upstream's Redis database lists its locks by scanning "pr*" and decoding
// every match as a lock, and it may share this Redis and database (as the
// legacy store next to a prefixed keyspace, or after a rollback). So no key
// but a lock key may start with "pr": no kind above does, and
// ValidateKeyPrefix refuses prefixes that would make one (TestNoKeyMatchesUpstreamScans).
type keyspace struct {
	prefix string
	// cluster splits the global index into one shard per hash slot, so that a
	// lock and its index entry change in one script. A single Redis needs one.
	cluster bool
}

// lockKeys are the names of every key one lock's scripts touch. They all
// hash to the lock key's slot.
type lockKeys struct {
	lock      string
	queue     string
	deadlines string
	values    string
	released  string
	shard     string
	// releaseTimes is shared by the locks of a slot, like shard.
	releaseTimes string
	channel      string
	entries      string
	// outbox, notices and queues are shared by the locks of a slot, like
	// shard.
	outbox  string
	notices string
	queues  string
}

// script returns the KEYS of every lock script, in the order the scripts
// expect (see lua/helpers.lua).
func (k lockKeys) script() []string {
	return []string{k.lock, k.queue, k.deadlines, k.values, k.shard, k.released, k.releaseTimes,
		k.entries, k.outbox, k.notices, k.queues}
}

func (ks keyspace) forProject(p models.Project, workspace string) lockKeys {
	return ks.forLockKey(ks.prefix + "pr/" + models.GenerateLockKey(p, workspace))
}

// forLockKey derives the related keys from a full lock key, as read back from
// an index.
func (ks keyspace) forLockKey(lockKey string) lockKeys {
	return lockKeys{
		lock:         lockKey,
		queue:        ks.related("w", lockKey),
		deadlines:    ks.related("wd", lockKey),
		values:       ks.related("wv", lockKey),
		released:     ks.related("u", lockKey),
		shard:        ks.shard(lockKey),
		releaseTimes: ks.releaseTimes(lockKey),
		channel:      ks.related("n", lockKey),
		entries:      ks.related("qm", lockKey),
		outbox:       ks.slotShared("outbox", lockKey),
		notices:      ks.slotShared("outbox:notices", lockKey),
		queues:       ks.slotShared("queues", lockKey),
	}
}

// lockPattern matches every lock key for SCAN.
func (ks keyspace) lockPattern() string {
	return globEscape(ks.prefix+"pr/") + "*"
}

// shards names the set of index shard keys.
func (ks keyspace) shards() string {
	return ks.prefix + "locks:shards"
}

func (ks keyspace) shard(lockKey string) string {
	return ks.slotShared("locks", lockKey)
}

func (ks keyspace) releaseTimes(lockKey string) string {
	return ks.slotShared("locks:released", lockKey)
}

// slotShared names the key of kind that every lock of lockKey's slot shares:
// one for all without a cluster.
func (ks keyspace) slotShared(kind, lockKey string) string {
	if !ks.cluster {
		return ks.prefix + kind
	}
	return ks.prefix + kind + "{" + slotTag(keySlot(lockKey)) + "}"
}

// inSlot names the key of kind in the slot whose index shard has tag (see
// shardTag), for the scripts that act on a whole slot.
func (ks keyspace) inSlot(kind, tag string) string {
	return ks.prefix + kind + tag
}

// shardTag is what follows prefix+"locks" in an index shard key: the slot's
// "{tag}" in a cluster, "" without one. Shard keys are read back from the
// shard set, which anyone can write to; false says shard is none of ours, so
// it names no slot.
func (ks keyspace) shardTag(shard string) (string, bool) {
	tag, ok := strings.CutPrefix(shard, ks.prefix+"locks")
	if !ok || !ks.cluster {
		return "", ok && tag == ""
	}
	inner, opened := strings.CutPrefix(tag, "{")
	inner, closed := strings.CutSuffix(inner, "}")
	return tag, opened && closed && inner != "" && slotTag(keySlot(inner)) == inner
}

// pull names a pull's index and the set an UnlockByPull moves it to; both
// hash to one slot so the move is one script.
func (ks keyspace) pull(repoFullName string, pullNum int) (index, closing string) {
	base := ks.prefix + repoFullName + "::" + strconv.Itoa(pullNum)
	return ks.related("pull", base), ks.related("pullclosing", base)
}

// commandLease names a pull's command lease and its wait line, in one slot.
func (ks keyspace) commandLease(repoFullName string, pullNum int) []string {
	base := ks.prefix + repoFullName + "::" + strconv.Itoa(pullNum)
	return []string{ks.related("cmdlease", base), ks.related("cmdwait", base), ks.related("cmdwaitlive", base)}
}

// commandLeases is the listing set of command lease keys. It is written
// apart from the leases (it may sit in another cluster slot) and is never
// trusted alone: a listed key that is gone is no lease.
func (ks keyspace) commandLeases() string {
	return ks.prefix + "cmdleases"
}

// claim names a ClaimOnce key.
func (ks keyspace) claim(name string) string {
	return ks.prefix + "claim:" + name
}

func (ks keyspace) command(name command.Name) string {
	return fmt.Sprintf("%sglobal/%s/lock", ks.prefix, name)
}

// related returns prefix + kind + "{" + T + "}" + S, a key in base's slot that
// no other (kind, base) pair produces. kind never contains a brace.
func (ks keyspace) related(kind, base string) string {
	tag := hashTag(base)
	if strings.IndexByte(tag, '}') >= 0 {
		// Only a key without a valid tag can have a "}" in its effective tag;
		// a substitute tag keeps the slot.
		return ks.prefix + kind + "{" + slotTag(keySlot(base)) + "}" + base
	}
	if tag == base {
		return ks.prefix + kind + "{" + base + "}"
	}
	return ks.prefix + kind + "{" + tag + "}" + base
}

// upstreamScanPrefix is what upstream's Redis database's List scans for.
const upstreamScanPrefix = "pr"

// ValidateKeyPrefix reports whether prefix can be prepended to every key. A
// prefix may not contain braces, except as a complete, non-empty hash tag such
// as "{atlantis}:", which puts every key in one slot: other braces would
// separate a lock from its related keys in Redis Cluster. And it may not make
// our keys look like upstream's locks to upstream's scan of "pr*".
func ValidateKeyPrefix(prefix string) error {
	if strings.HasPrefix(prefix, upstreamScanPrefix) {
		return fmt.Errorf("key prefix %q starts with %q: upstream's Redis database lists its locks by scanning "+
			"\"%s*\", so on a shared Redis and database it would read our keys as locks and fail; "+
			"choose a prefix that does not start with %q, e.g. \"atlantis-%s\"", prefix, upstreamScanPrefix, upstreamScanPrefix, upstreamScanPrefix, prefix)
	}
	open := strings.IndexByte(prefix, '{')
	if open < 0 {
		return nil
	}
	end := strings.IndexByte(prefix[open+1:], '}')
	if end <= 0 {
		return fmt.Errorf("key prefix %q has a %q that does not start a complete hash tag: "+
			"remove the braces or close a non-empty tag, e.g. \"{atlantis}:\"", prefix, "{")
	}
	return nil
}

// hashTag is the part of key Redis Cluster hashes: the text between the first
// "{" and the next "}" when it is not empty, else the whole key.
func hashTag(key string) string {
	open := strings.IndexByte(key, '{')
	if open < 0 {
		return key
	}
	end := strings.IndexByte(key[open+1:], '}')
	if end <= 0 {
		return key
	}
	return key[open+1 : open+1+end]
}

// globEscape quotes the characters SCAN MATCH treats specially. It works on
// bytes, as Redis does: ranging over runes would turn the bytes of a prefix
// that is not UTF-8 into U+FFFD, and the pattern would match none of our keys.
func globEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
