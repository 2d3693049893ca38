package backends

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// Hostile stored values: whatever a key holds (a hand edit, another tool, an
// older version), every script either does its whole job or writes nothing
// and fails with an error naming the key, and every method either succeeds or
// returns enhanced.ErrCorruptLock naming the key. A release that fails
// released nothing.

// TestScriptsSurviveHostileStoredValues runs every backend method that runs a
// script against one hostile value at a time in each key the scripts read.
func TestScriptsSurviveHostileStoredValues(t *testing.T) {
	rig := newHostileRig(t)
	for _, m := range hostileMutations(rig.state) {
		t.Run(m.name, func(t *testing.T) {
			for _, op := range hostileOps() {
				if op.lease == m.lease {
					rig.check(t, op, m.set, m.key)
				}
			}
		})
	}
}

// A lock whose JSON has "BaseRepo": null (any writer but Go's encoder) is
// released and handed to its queue's head by every release path.
func TestLockWithNullBaseRepoIsHandedOver(t *testing.T) {
	ctx := context.Background()
	client := redistest.Start(t).Client(t)
	holder := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	releases := map[string]func(r *Redis) (*models.ProjectLock, error){
		"Unlock": func(r *Redis) (*models.ProjectLock, error) {
			return r.Unlock(ctx, holder.Project, holder.Workspace)
		},
		"UnlockIfOwnedByPull": func(r *Redis) (*models.ProjectLock, error) {
			return r.UnlockIfOwnedByPull(ctx, holder.Project, holder.Workspace, 1)
		},
		"UnlockByPull": func(r *Redis) (*models.ProjectLock, error) {
			locks, err := r.UnlockByPull(ctx, "org/repo", 1)
			if len(locks) != 1 {
				return nil, errors.Join(err, fmt.Errorf("released %d locks, want 1", len(locks)))
			}
			return &locks[0], err
		},
	}
	for name, release := range releases {
		t.Run(name, func(t *testing.T) {
			r := newTestRedis(t, client, RedisOptions{})
			mustTryLock(t, r, holder)
			k := r.keys.forProject(holder.Project, holder.Workspace)
			value := editJSON(storedValue(t, r, holder), func(m map[string]any) { pullOf(m)["BaseRepo"] = nil })
			Ok(t, client.Set(ctx, k.lock, value, 0).Err())
			next := enhancedtest.NewLock("org/repo", "dir", "default", "", 2)
			_, err := r.Enqueue(ctx, enhancedtest.QueueRequest(next, enhanced.PriorityNormal, time.Hour))
			Ok(t, err)

			released, err := release(r)
			Ok(t, err)
			Equals(t, 1, released.Pull.Num)
			Equals(t, models.Repo{}, released.Pull.BaseRepo)
			got, err := r.GetLock(ctx, holder.Project, holder.Workspace)
			Ok(t, err)
			Assert(t, got != nil, "lock freed, not handed to the queue")
			Equals(t, 2, got.Pull.Num)
			notices, err := r.ClaimNotices(ctx, time.Minute, 10)
			Ok(t, err)
			Equals(t, 1, len(notices))
			Equals(t, enhanced.NoticeTransferred, notices[0].Kind)
		})
	}
}

// hostileState names the keys and values of the rig's base state.
type hostileState struct {
	holder models.ProjectLock
	k      lockKeys
	// holderValue is the stored lock; entryToken and entryValue the durable
	// entry of pull 2 queued for it; waiterToken a synchronous waiter of
	// pull 3.
	holderValue string
	entryToken  string
	entryValue  string
	waiterToken string
	// noticeID is the transferred notice of another lock handed to pull 6.
	noticeID string
	// lease is pull 1's command lease keys, leaseToken its holder's token;
	// leaseWaiter waits for it.
	lease       []string
	leaseToken  string
	leaseWaiter string
}

// storedKey is one key of a snapshot.
type storedKey struct {
	dump string
	ttl  time.Duration
}

// same says whether two snapshots of a key hold the same: the time to live
// runs down between them, so only whether it has one counts.
func (s storedKey) same(o storedKey) bool {
	return s.dump == o.dump && (s.ttl > 0) == (o.ttl > 0)
}

// hostileRig is a real redis-server with a base state of a held lock, its
// queue (a durable entry and a synchronous waiter), a notice in the outbox
// and a command lease with a waiter, restored before every check.
type hostileRig struct {
	client *redis.Client
	admin  *redis.Client
	audit  *scriptAudit
	base   map[string]storedKey
	state  *hostileState
}

func newHostileRig(t testing.TB) *hostileRig {
	srv := redistest.Start(t)
	admin := srv.Client(t)
	client := srv.Client(t)
	audit := &scriptAudit{admin: admin}
	client.AddHook(audit)
	rig := &hostileRig{client: client, admin: admin, audit: audit}
	rig.state = buildHostileBase(t, client)
	base, err := snapshot(context.Background(), admin)
	Ok(t, err)
	rig.base = base
	return rig
}

func buildHostileBase(t testing.TB, client *redis.Client) *hostileState {
	ctx := context.Background()
	Ok(t, client.FlushAll(ctx).Err())
	r, err := NewRedis(client, RedisOptions{WaiterTTL: 24 * time.Hour})
	Ok(t, err)
	defer r.Close() // nolint: errcheck
	s := &hostileState{holder: enhancedtest.NewLock("org/repo", "dir", "default", "", 1)}
	s.k = r.keys.forProject(s.holder.Project, s.holder.Workspace)
	mustTryLock(t, r, s.holder)
	s.holderValue = storedValue(t, r, s.holder)
	res, err := r.Enqueue(ctx, enhancedtest.QueueRequest(enhancedtest.NewLock("org/repo", "dir", "default", "", 2), enhanced.PriorityNormal, 24*time.Hour))
	Ok(t, err)
	s.entryToken = res.Entry.ID
	s.entryValue, err = client.HGet(ctx, s.k.values, s.entryToken).Result()
	Ok(t, err)
	s.waiterToken = queue(t, r, enhancedtest.NewLock("org/repo", "dir", "default", "", 3), enhanced.PriorityLow).token

	// Another lock handed over leaves a notice in the slot's outbox.
	other := enhancedtest.NewLock("org/repo", "other", "default", "", 5)
	mustTryLock(t, r, other)
	_, err = r.Enqueue(ctx, enhancedtest.QueueRequest(enhancedtest.NewLock("org/repo", "other", "default", "", 6), enhanced.PriorityNormal, 24*time.Hour))
	Ok(t, err)
	_, err = r.Unlock(ctx, other.Project, other.Workspace)
	Ok(t, err)
	ids, err := client.ZRange(ctx, s.k.outbox, 0, -1).Result()
	Ok(t, err)
	Equals(t, 1, len(ids))
	s.noticeID = ids[0]
	// The sweep takes the other lock out of the queues set, so that every
	// queue script a check runs is of the lock under test.
	_, err = r.Sweep(ctx)
	Ok(t, err)
	// A lock deleted by hand leaves its index entry for List to prune.
	Ok(t, client.SAdd(ctx, s.k.shard, "pr/org/repo/gone/default/").Err())

	pull := enhanced.PullRef{RepoFullName: "org/repo", Num: 1}
	s.lease = r.keys.commandLease(pull.RepoFullName, pull.Num)
	s.leaseToken, s.leaseWaiter = "lease-holder", "lease-waiter"
	for _, token := range []string{s.leaseToken, s.leaseWaiter} {
		_, err := r.TryCommandLease(ctx, enhanced.CommandLeaseRequest{Pull: pull, Token: token, Replica: "a", Command: "plan",
			TTL: 24 * time.Hour, WaiterTTL: 24 * time.Hour})
		Ok(t, err)
	}
	return s
}

// reset restores the base state.
func (rig *hostileRig) reset(t testing.TB) {
	ctx := context.Background()
	_, err := rig.admin.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.FlushAll(ctx)
		for key, v := range rig.base {
			p.RestoreReplace(ctx, key, v.ttl, v.dump)
		}
		return nil
	})
	Ok(t, err)
}

// hostileOp is one backend method; lease marks the command lease methods,
// which read keys of their own.
type hostileOp struct {
	name  string
	lease bool
	// release marks the methods that release the lock: failing, they must
	// have released nothing.
	release bool
	run     func(ctx context.Context, r *Redis, s *hostileState) error
}

func hostileOps() []hostileOp {
	pull := func(n int) models.ProjectLock { return enhancedtest.NewLock("org/repo", "dir", "default", "", n) }
	leasePull := enhanced.PullRef{RepoFullName: "org/repo", Num: 1}
	tryLease := func(token string) func(context.Context, *Redis, *hostileState) error {
		return func(ctx context.Context, r *Redis, s *hostileState) error {
			_, err := r.TryCommandLease(ctx, enhanced.CommandLeaseRequest{Pull: leasePull, Token: token, Replica: "b",
				Command: "apply", TTL: time.Hour, WaiterTTL: time.Hour})
			return err
		}
	}
	return []hostileOp{
		{name: "TryLock by the holder", run: func(ctx context.Context, r *Redis, s *hostileState) error {
			_, _, err := r.TryLock(ctx, enhancedtest.Request(pull(1)))
			return err
		}},
		{name: "TryLock by another pull", run: func(ctx context.Context, r *Redis, s *hostileState) error {
			_, _, err := r.TryLock(ctx, enhancedtest.Request(pull(7)))
			return err
		}},
		{name: "TryLock through the acquire script", run: func(ctx context.Context, r *Redis, s *hostileState) error {
			r.setGetRefused.Store(true)
			_, _, err1 := r.TryLock(ctx, enhancedtest.Request(pull(7)))
			_, _, err2 := r.TryLock(ctx, enhancedtest.Request(pull(1)))
			return errors.Join(err1, err2)
		}},
		{name: "TryLockWithTimeout", run: func(ctx context.Context, r *Redis, s *hostileState) error {
			_, _, err := r.TryLockWithTimeout(ctx, enhancedtest.Request(pull(7)), time.Millisecond)
			return err
		}},
		{name: "GetLock", run: func(ctx context.Context, r *Redis, s *hostileState) error {
			_, err := r.GetLock(ctx, s.holder.Project, s.holder.Workspace)
			return err
		}},
		{name: "QueueLength", run: func(ctx context.Context, r *Redis, s *hostileState) error {
			_, err := r.QueueLength(ctx, s.holder.Project, s.holder.Workspace)
			return err
		}},
		{name: "Unlock", release: true, run: func(ctx context.Context, r *Redis, s *hostileState) error {
			_, err := r.Unlock(ctx, s.holder.Project, s.holder.Workspace)
			return err
		}},
		{name: "UnlockIfOwnedByPull by the holder", release: true, run: func(ctx context.Context, r *Redis, s *hostileState) error {
			_, err := r.UnlockIfOwnedByPull(ctx, s.holder.Project, s.holder.Workspace, 1)
			return err
		}},
		{name: "UnlockIfOwnedByPull by another pull", release: true, run: func(ctx context.Context, r *Redis, s *hostileState) error {
			_, err := r.UnlockIfOwnedByPull(ctx, s.holder.Project, s.holder.Workspace, 9)
			return err
		}},
		{name: "UnlockByPull", release: true, run: func(ctx context.Context, r *Redis, s *hostileState) error {
			_, err := r.UnlockByPull(ctx, "org/repo", 1)
			return err
		}},
		{name: "Enqueue a new pull", run: func(ctx context.Context, r *Redis, s *hostileState) error {
			_, err := r.Enqueue(ctx, enhancedtest.QueueRequest(pull(8), enhanced.PriorityHigh, time.Hour))
			return err
		}},
		{name: "Enqueue the queued pull again", run: func(ctx context.Context, r *Redis, s *hostileState) error {
			_, err := r.Enqueue(ctx, enhancedtest.QueueRequest(pull(2), enhanced.PriorityNormal, time.Hour))
			return err
		}},
		{name: "LeaveQueue", run: func(ctx context.Context, r *Redis, s *hostileState) error {
			_, err := r.LeaveQueue(ctx, s.holder.Project, s.holder.Workspace, "org/repo", 2)
			return err
		}},
		{name: "LeaveQueues", run: func(ctx context.Context, r *Redis, s *hostileState) error {
			_, err := r.LeaveQueues(ctx, "org/repo", 2)
			return err
		}},
		{name: "Queue", run: func(ctx context.Context, r *Redis, s *hostileState) error {
			_, err := r.Queue(ctx, s.holder.Project, s.holder.Workspace)
			return err
		}},
		{name: "Queues", run: func(ctx context.Context, r *Redis, s *hostileState) error {
			_, err := r.Queues(ctx)
			return err
		}},
		{name: "Sweep", run: func(ctx context.Context, r *Redis, s *hostileState) error {
			_, err := r.Sweep(ctx)
			return err
		}},
		{name: "ClaimNotices and deliver", run: func(ctx context.Context, r *Redis, s *hostileState) error {
			notices, err := r.ClaimNotices(ctx, time.Minute, 10)
			if err != nil {
				return err
			}
			for _, n := range notices {
				if err := r.RenewNotice(ctx, n, time.Minute); err != nil {
					return err
				}
				if err := r.MarkNotice(ctx, n, enhanced.NoticeStep("commented"), time.Minute); err != nil {
					return err
				}
				if err := r.AckNotice(ctx, n); err != nil {
					return err
				}
			}
			return nil
		}},
		{name: "List", run: func(ctx context.Context, r *Redis, s *hostileState) error {
			_, err := r.List(ctx)
			return err
		}},
		{name: "TryCommandLease by the holder", lease: true, run: tryLease("lease-holder")},
		{name: "TryCommandLease by a waiter", lease: true, run: tryLease("lease-waiter")},
		{name: "TryCommandLease by a newcomer", lease: true, run: tryLease("lease-newcomer")},
		{name: "RenewCommandLease", lease: true, run: func(ctx context.Context, r *Redis, s *hostileState) error {
			_, err := r.RenewCommandLease(ctx, leasePull, s.leaseToken, time.Hour)
			return err
		}},
		{name: "ReleaseCommandLease", lease: true, run: func(ctx context.Context, r *Redis, s *hostileState) error {
			return r.ReleaseCommandLease(ctx, leasePull, s.leaseToken)
		}},
		{name: "CommandLeases", lease: true, run: func(ctx context.Context, r *Redis, s *hostileState) error {
			_, err := r.CommandLeases(ctx)
			return err
		}},
	}
}

// check restores the base state, applies set (which makes one of keys
// hostile), runs op and checks the property above: an error must name one of
// keys.
func (rig *hostileRig) check(t testing.TB, op hostileOp, set func(context.Context, redis.Cmdable) error, keys ...string) {
	t.Helper()
	ctx := context.Background()
	rig.reset(t)
	Ok(t, set(ctx, rig.admin))
	lockKey := []string{rig.state.k.lock}
	before, err := snapshotKeys(ctx, rig.admin, lockKey)
	Ok(t, err)
	r, err := NewRedis(rig.client, RedisOptions{WaiterTTL: time.Hour})
	Ok(t, err)
	rig.audit.start()
	err = func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("panic: %v", p)
				t.Errorf("%s: %v", op.name, err)
			}
		}()
		return op.run(ctx, r, rig.state)
	}()
	Ok(t, r.Close())
	for _, v := range rig.audit.stop() {
		t.Errorf("%s: %s", op.name, v)
	}
	if err == nil {
		return
	}
	named := false
	for _, key := range keys {
		named = named || strings.Contains(err.Error(), key)
	}
	if !errors.Is(err, enhanced.ErrCorruptLock) || !named {
		t.Errorf("%s: want enhanced.ErrCorruptLock naming key %q, got: %v", op.name, keys, err)
	}
	if op.release {
		after, serr := snapshotKeys(ctx, rig.admin, lockKey)
		Ok(t, serr)
		if !before[rig.state.k.lock].same(after[rig.state.k.lock]) {
			t.Errorf("%s failed (%v) but changed the lock", op.name, err)
		}
	}
}

// scriptAudit is a go-redis hook that checks each script a client runs: a
// script that fails has written nothing to the keys it was given, and fails
// on purpose (a CORRUPT error naming a key), never by a Lua error part way.
type scriptAudit struct {
	admin *redis.Client

	mu         sync.Mutex
	on         bool
	violations []string
}

func (a *scriptAudit) start() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.on, a.violations = true, nil
}

func (a *scriptAudit) stop() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.on = false
	return a.violations
}

func (a *scriptAudit) active() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.on
}

func (a *scriptAudit) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) { return next(ctx, network, addr) }
}

func (a *scriptAudit) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		return a.around(ctx, []redis.Cmder{cmd}, func() error { return next(ctx, cmd) })
	}
}

func (a *scriptAudit) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		return a.around(ctx, cmds, func() error { return next(ctx, cmds) })
	}
}

func (a *scriptAudit) around(ctx context.Context, cmds []redis.Cmder, run func() error) error {
	if !a.active() || !hasScript(cmds) {
		return run()
	}
	var keys []string
	for _, cmd := range cmds {
		if isScript(cmd) {
			keys = append(keys, scriptKeys(cmd)...)
		}
	}
	before, serr := snapshotKeys(ctx, a.admin, keys)
	err := run()
	after, aerr := snapshotKeys(ctx, a.admin, keys)
	if serr != nil || aerr != nil {
		a.report("snapshot failed: %v", errors.Join(serr, aerr))
		return err
	}
	// Keys the pipeline's other commands write may change.
	others := map[string]bool{}
	for _, cmd := range cmds {
		if !isScript(cmd) && len(cmd.Args()) > 1 {
			others[fmt.Sprint(cmd.Args()[1])] = true
		}
	}
	for _, cmd := range cmds {
		cerr := cmd.Err()
		if !isScript(cmd) || cerr == nil || redis.HasErrorPrefix(cerr, "NOSCRIPT") {
			continue
		}
		var reply redis.Error
		if !errors.As(cerr, &reply) {
			continue // not Redis's answer: the connection failed
		}
		if !strings.HasPrefix(cerr.Error(), corruptPrefix) {
			a.report("script failed by accident, not on purpose: %v", cerr)
		}
		for _, key := range scriptKeys(cmd) {
			if !others[key] && !before[key].same(after[key]) {
				a.report("script failed (%v) after writing key %q", cerr, key)
			}
		}
	}
	return err
}

func (a *scriptAudit) report(format string, args ...any) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.violations = append(a.violations, fmt.Sprintf(format, args...))
}

func isScript(cmd redis.Cmder) bool {
	name := cmd.Name()
	return name == "evalsha" || name == "eval"
}

func hasScript(cmds []redis.Cmder) bool {
	for _, cmd := range cmds {
		if isScript(cmd) {
			return true
		}
	}
	return false
}

// scriptKeys are the KEYS of an EVAL or EVALSHA.
func scriptKeys(cmd redis.Cmder) []string {
	args := cmd.Args()
	if len(args) < 3 {
		return nil
	}
	n, err := strconv.Atoi(fmt.Sprint(args[2]))
	if err != nil || len(args) < 3+n {
		return nil
	}
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprint(args[3+i])
	}
	return keys
}

// snapshot reads every key: its DUMP and its time to live.
func snapshot(ctx context.Context, c *redis.Client) (map[string]storedKey, error) {
	keys, err := c.Keys(ctx, "*").Result()
	if err != nil {
		return nil, err
	}
	return snapshotKeys(ctx, c, keys)
}

// snapshotKeys reads the keys that exist among keys.
func snapshotKeys(ctx context.Context, c *redis.Client, keys []string) (map[string]storedKey, error) {
	dumps := make([]*redis.StringCmd, len(keys))
	ttls := make([]*redis.DurationCmd, len(keys))
	if _, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, key := range keys {
			dumps[i] = p.Dump(ctx, key)
			ttls[i] = p.PTTL(ctx, key)
		}
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	out := make(map[string]storedKey, len(keys))
	for i, key := range keys {
		if dumps[i].Err() != nil {
			continue // no such key
		}
		ttl := ttls[i].Val()
		if ttl < 0 {
			ttl = 0
		}
		out[key] = storedKey{dump: dumps[i].Val(), ttl: ttl}
	}
	return out, nil
}

// hostileMutation makes one key of the base state hostile.
type hostileMutation struct {
	name  string
	key   string
	lease bool
	set   func(ctx context.Context, c redis.Cmdable) error
}

func setString(key, value string) func(context.Context, redis.Cmdable) error {
	return func(ctx context.Context, c redis.Cmdable) error {
		return c.Set(ctx, key, value, 0).Err()
	}
}

func setField(key, field, value string) func(context.Context, redis.Cmdable) error {
	return func(ctx context.Context, c redis.Cmdable) error {
		return c.HSet(ctx, key, field, value).Err()
	}
}

// retype replaces key with a value of another Redis type.
func retype(key, typ string) func(context.Context, redis.Cmdable) error {
	return func(ctx context.Context, c redis.Cmdable) error {
		if err := c.Del(ctx, key).Err(); err != nil {
			return err
		}
		switch typ {
		case "string":
			return c.Set(ctx, key, "x", 0).Err()
		case "hash":
			return c.HSet(ctx, key, "x", "y").Err()
		case "list":
			return c.RPush(ctx, key, "x").Err()
		case "set":
			return c.SAdd(ctx, key, "x").Err()
		default:
			return c.ZAdd(ctx, key, redis.Z{Score: 1, Member: "x"}).Err()
		}
	}
}

// editJSON returns value with edit applied to it as a JSON object, encoded
// again by a writer that is not Go's struct encoder: keys come sorted.
func editJSON(value string, edit func(m map[string]any)) string {
	var m map[string]any
	if err := json.Unmarshal([]byte(value), &m); err != nil {
		panic(err)
	}
	edit(m)
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func pullOf(m map[string]any) map[string]any { return m["Pull"].(map[string]any) }

// hostileLockValues are values no enhanced replica writes at a lock key, made
// from the lock value valid.
func hostileLockValues(valid string) map[string]string {
	return map[string]string{
		"BaseRepo null":        editJSON(valid, func(m map[string]any) { pullOf(m)["BaseRepo"] = nil }),
		"BaseRepo a string":    editJSON(valid, func(m map[string]any) { pullOf(m)["BaseRepo"] = "org/repo" }),
		"FullName a number":    editJSON(valid, func(m map[string]any) { pullOf(m)["BaseRepo"] = map[string]any{"FullName": 7} }),
		"Pull null":            editJSON(valid, func(m map[string]any) { m["Pull"] = nil }),
		"Project null":         editJSON(valid, func(m map[string]any) { m["Project"] = nil }),
		"Project an array":     editJSON(valid, func(m map[string]any) { m["Project"] = []any{} }),
		"Num a string":         editJSON(valid, func(m map[string]any) { pullOf(m)["Num"] = "1" }),
		"Num missing":          editJSON(valid, func(m map[string]any) { delete(pullOf(m), "Num") }),
		"Num huge":             strings.Replace(valid, `"Num":1,`, `"Num":1e300,`, 1),
		"Num past float":       strings.Replace(valid, `"Num":1,`, `"Num":1e400,`, 1),
		"Num past 2^53":        strings.Replace(valid, `"Num":1,`, `"Num":9007199254740993,`, 1),
		"Num a fraction":       strings.Replace(valid, `"Num":1,`, `"Num":1.5,`, 1),
		"Num negative":         strings.Replace(valid, `"Num":1,`, `"Num":-1,`, 1),
		"Num an exponent":      strings.Replace(valid, `"Num":1,`, `"Num":1e0,`, 1),
		"Time not a time":      editJSON(valid, func(m map[string]any) { m["Time"] = "yesterday" }),
		"fields in lower case": strings.NewReplacer(`"Project"`, `"project"`, `"Pull"`, `"pull"`).Replace(valid),
		"sorted keys":          editJSON(valid, func(map[string]any) {}),
		"token in the middle":  editJSON(valid, func(map[string]any) {}) + " ",
		"newline in a string":  editJSON(valid, func(m map[string]any) { m["Workspace"] = "a\nb|c" }),
		"newlines between":     strings.ReplaceAll(valid, ",", ",\n"),
		"decoy pull number":    `garbage "Pull":{"Num":1, garbage`,
		"empty object":         `{}`,
		"null":                 `null`,
		"array":                `[]`,
		"string":               `"lock"`,
		"number":               `1e400`,
		"not JSON":             `not json`,
		"empty":                ``,
		"truncated":            valid[:len(valid)/2],
		"trailing garbage":     valid + `x`,
		"deep nesting":         strings.Repeat(`[`, 2000) + strings.Repeat(`]`, 2000),
		"huge":                 editJSON(valid, func(m map[string]any) { m["Workspace"] = strings.Repeat("w", 100<<10) }),
	}
}

// hostileMutations are the hostile values of every key the scripts read.
func hostileMutations(s *hostileState) []hostileMutation {
	k := s.k
	var out []hostileMutation
	add := func(name, key string, set func(context.Context, redis.Cmdable) error) {
		out = append(out, hostileMutation{name: name, key: key, set: set})
	}
	values := hostileLockValues(s.holderValue)
	names := make([]string, 0, len(values))
	for name := range values {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		add("lock "+name, k.lock, setString(k.lock, values[name]))
	}
	// Every key in a type the scripts do not keep there.
	types := []struct{ key, typ string }{
		{k.lock, "hash"}, {k.lock, "list"}, {k.queue, "string"}, {k.queue, "hash"}, {k.deadlines, "string"},
		{k.deadlines, "zset"}, {k.values, "set"}, {k.shard, "string"}, {k.released, "hash"}, {k.releaseTimes, "string"},
		{k.entries, "string"}, {k.entries, "list"}, {k.outbox, "hash"}, {k.notices, "zset"}, {k.queues, "string"},
	}
	for _, tc := range types {
		add(fmt.Sprintf("%s a %s", tc.key, tc.typ), tc.key, retype(tc.key, tc.typ))
	}
	// The queue: members without a waiter, or whose waiter is not ours.
	for _, member := range []string{"ghost", "new\nline", "a|b", ""} {
		add(fmt.Sprintf("queue member %q", member), k.queue, func(ctx context.Context, c redis.Cmdable) error {
			return c.ZAdd(ctx, k.queue, redis.Z{Score: -1, Member: member}).Err()
		})
	}
	add("queue member with a newline and an entry", k.queue, func(ctx context.Context, c redis.Cmdable) error {
		token := "new\nline"
		_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.ZAdd(ctx, k.queue, redis.Z{Score: -1, Member: token})
			p.HSet(ctx, k.deadlines, token, time.Now().Add(time.Hour).UnixMilli())
			p.HSet(ctx, k.values, token, s.entryValue)
			p.HSet(ctx, k.entries, token, "2|1700000000000|org/repo#4")
			return nil
		})
		return err
	})
	for _, token := range []string{s.entryToken, s.waiterToken} {
		who := "entry"
		if token == s.waiterToken {
			who = "waiter"
		}
		for _, d := range []string{"x", "", "-1", "nan", "inf", "1e400", "0x10", "99999999999999999999999"} {
			add(fmt.Sprintf("%s deadline %q", who, d), k.deadlines, setField(k.deadlines, token, d))
		}
		wv := hostileLockValues(s.entryValue)
		for _, name := range []string{"BaseRepo null", "Num a string", "Num an exponent", "not JSON", "empty", "decoy pull number", "Time not a time"} {
			add(fmt.Sprintf("%s value %s", who, name), k.values, setField(k.values, token, wv[name]))
		}
	}
	for _, meta := range []string{"garbage", "", "|||", "2|1700000000000", "2|x|org/repo#2", "x|1700000000000|org/repo#2",
		"2|1700000000000|", "2|1700000000000|org/repo#2\nx", "99999999999999999999|1700000000000|org/repo#2",
		"2|99999999999999999999|org/repo#2", "2|1700000000000|org/repo|#2", "0x2|1700000000000|org/repo#2"} {
		add(fmt.Sprintf("entry metadata %q", meta), k.entries, setField(k.entries, s.entryToken, meta))
	}
	add("waiter given metadata", k.entries, setField(k.entries, s.waiterToken, "garbage"))
	add("pull mapped to no entry", k.entries, setField(k.entries, "p:org/repo#2", "ghost"))
	add("pull mapped to a waiter", k.entries, setField(k.entries, "p:org/repo#2", s.waiterToken))
	add("new pull mapped to an entry", k.entries, setField(k.entries, "p:org/repo#8", s.entryToken))
	for _, rec := range []string{"garbage", "\n", "x\ngarbage", ""} {
		add(fmt.Sprintf("release record %q", rec), k.released, setString(k.released, rec))
	}
	add("release time garbage", k.releaseTimes, setField(k.releaseTimes, k.lock, "garbage"))
	add("queues member garbage", k.queues, func(ctx context.Context, c redis.Cmdable) error {
		return c.SAdd(ctx, k.queues, "not a lock\n", "").Err()
	})
	add("shard member garbage", k.shard, func(ctx context.Context, c redis.Cmdable) error {
		return c.SAdd(ctx, k.shard, "not a lock\n").Err()
	})
	add("outbox id without a notice", k.outbox, func(ctx context.Context, c redis.Cmdable) error {
		return c.ZAdd(ctx, k.outbox, redis.Z{Score: 0, Member: "ghost"}).Err()
	})
	for name, payload := range hostileNotices(s) {
		add("notice "+name, k.notices, setField(k.notices, s.noticeID, payload))
	}
	add("notice steps garbage", k.notices, setField(k.notices, "d:"+s.noticeID, "\n\n|x"))
	add("notice claimed by garbage", k.notices, setField(k.notices, "c:"+s.noticeID, "garbage"))

	// The command lease's keys.
	lease, wait, live := s.lease[0], s.lease[1], s.lease[2]
	addLease := func(name, key string, set func(context.Context, redis.Cmdable) error) {
		out = append(out, hostileMutation{name: name, key: key, lease: true, set: set})
	}
	for _, tc := range []struct{ key, typ string }{{lease, "string"}, {lease, "zset"}, {wait, "hash"}, {wait, "string"}, {live, "set"}, {live, "string"}} {
		addLease(fmt.Sprintf("%s a %s", tc.key, tc.typ), tc.key, retype(tc.key, tc.typ))
	}
	addLease("lease without a token", lease, func(ctx context.Context, c redis.Cmdable) error {
		return c.HDel(ctx, lease, "token").Err()
	})
	addLease("lease since garbage", lease, setField(lease, "since", "garbage"))
	addLease("lease pull garbage", lease, setField(lease, "pull", "garbage"))
	for _, d := range []string{"x", "", "nan", "1e400"} {
		addLease(fmt.Sprintf("waiter liveness %q", d), live, setField(live, s.leaseWaiter, d))
	}
	addLease("waiter without liveness", live, func(ctx context.Context, c redis.Cmdable) error {
		return c.HDel(ctx, live, s.leaseWaiter).Err()
	})
	return out
}

// hostileNotices are notice payloads no script writes, made from the valid
// parts of the base state.
func hostileNotices(s *hostileState) map[string]string {
	return map[string]string{
		"empty":            "",
		"one field":        "transferred",
		"four fields":      "transferred\n" + s.k.lock + "\ntoken\n2|1700000000000|org/repo#6",
		"time garbage":     "transferred\n" + s.k.lock + "\ntoken\n2|1700000000000|org/repo#6\n0\nnow\n" + s.entryValue,
		"metadata garbage": "transferred\n" + s.k.lock + "\ntoken\ngarbage\n0\n1700000000000\n" + s.entryValue,
		"value garbage":    "expired\n" + s.k.lock + "\ntoken\n2|1700000000000|org/repo#6\n0\n1700000000000\nnot json",
		"kind garbage":     "garbage\n" + s.k.lock + "\ntoken\n2|1700000000000|org/repo#6\n0\n1700000000000\n" + s.entryValue,
		"lock key garbage": "transferred\nnot a lock\ntoken\n2|1700000000000|org/repo#6\n0\n1700000000000\n" + s.entryValue,
		"huge numbers":     "transferred\n" + s.k.lock + "\ntoken\n2|1700000000000|org/repo#6\n1e400\n99999999999999999999\n" + s.entryValue,
	}
}
