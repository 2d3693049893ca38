package enhanced_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/core/boltdb"
	"github.com/runatlantis/atlantis/server/core/db"
	"github.com/runatlantis/atlantis/server/core/locking"
	upstreamredis "github.com/runatlantis/atlantis/server/core/redis"
	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/events"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/events/eventstest"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/legacydb"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// openBolt opens upstream's BoltDB in dir, closed when the test ends.
func openBolt(t *testing.T, dir string) *boltdb.BoltDB {
	t.Helper()
	db, err := boltdb.New(dir)
	Ok(t, err)
	t.Cleanup(func() { db.Close() }) // nolint: errcheck
	return db
}

// fastClient fails fast when Redis is down, so fault tests do not wait for
// go-redis's default retries.
func fastClient(t *testing.T, srv *redistest.Server) *redis.Client {
	opts := srv.Options()
	opts.MaxRetries = -1
	opts.DialTimeout = 200 * time.Millisecond
	opts.ReadTimeout = 500 * time.Millisecond
	opts.WriteTimeout = 500 * time.Millisecond
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() }) // nolint: errcheck
	return c
}

func newRedisAdapter(t *testing.T, client redis.UniversalClient, legacy *boltdb.BoltDB, opts enhanced.AdapterOptions) *enhanced.Adapter {
	opts.BackendName = "redis"
	opts.SeparateLegacyLocks = true
	opts.OperationTimeout = 2 * time.Second
	if opts.Logger == nil {
		opts.Logger = logging.NewNoopLogger(t)
	}
	return newAdapter(t, guard(t, legacy), openRedis(t, client), opts)
}

// newAdapter is enhanced.NewAdapter, closed when the test ends, before the
// legacy database: closing copies what is still on its way into it.
func newAdapter(t *testing.T, legacy *legacydb.Guarded, backend enhanced.Backend, opts enhanced.AdapterOptions) *enhanced.Adapter {
	t.Helper()
	a := enhanced.NewAdapter(legacy, backend, opts)
	t.Cleanup(func() { a.Close() }) // nolint: errcheck
	return a
}

// guard is the one guard the server puts around the legacy database.
func guard(t *testing.T, database db.Database) *legacydb.Guarded {
	t.Helper()
	g, err := legacydb.Guard(database, legacydb.Options{})
	Ok(t, err)
	return g
}

// openRedis returns a backend on client, closed when the test ends, before
// the client: closing ends its waits.
func openRedis(t *testing.T, client redis.UniversalClient) *backends.Redis {
	t.Helper()
	r, err := backends.NewRedis(client, backends.RedisOptions{Logger: logging.NewNoopLogger(t)})
	Ok(t, err)
	t.Cleanup(func() { r.Close() }) // nolint: errcheck
	return r
}

// adapterModes builds the adapter the way the server does in each mode: on
// Redis, on the in-process BoltDB backend, and falling back to BoltDB while
// Redis is down.
func adapterModes(t *testing.T) map[string]func(t *testing.T) *enhanced.Adapter {
	client := redistest.Start(t).Client(t)
	down := redistest.Start(t)
	downClient := fastClient(t, down)
	down.Stop()
	return map[string]func(t *testing.T) *enhanced.Adapter{
		"redis": func(t *testing.T) *enhanced.Adapter {
			Ok(t, client.FlushAll(context.Background()).Err())
			return newRedisAdapter(t, client, openBolt(t, t.TempDir()), enhanced.AdapterOptions{})
		},
		"boltdb": func(t *testing.T) *enhanced.Adapter {
			legacy := guard(t, openBolt(t, t.TempDir()))
			return newAdapter(t, legacy, backends.NewBoltDB(legacy, logging.NewNoopLogger(t)), enhanced.AdapterOptions{BackendName: "boltdb"})
		},
		"redis-down-fallback-boltdb": func(t *testing.T) *enhanced.Adapter {
			a := newRedisAdapter(t, downClient, openBolt(t, t.TempDir()), enhanced.AdapterOptions{FallbackToLegacy: true})
			a.BackendHealthChanged(false)
			return a
		},
	}
}

// TestAdapter_Conformance runs the lock contract through the adapter as the
// db.Database upstream's clients see, in each mode the server installs.
func TestAdapter_Conformance(t *testing.T) {
	for name, newAdapter := range adapterModes(t) {
		caps := enhancedtest.Capabilities{}
		if name == "redis-down-fallback-boltdb" {
			// Upstream's BoltDB answers the pull holding a lock with false.
			caps.SamePullNotAcquired = true
		}
		t.Run(name, func(t *testing.T) {
			enhancedtest.RunConformance(t, func(t *testing.T) enhanced.Backend {
				return enhancedtest.LegacyBackend(newAdapter(t))
			}, caps)
		})
	}
}

// TestAdapter_UpstreamClients drives the adapter through upstream's Locker and
// ApplyLocker, the interfaces the server's components hold, in every mode.
func TestAdapter_UpstreamClients(t *testing.T) {
	for name, newAdapter := range adapterModes(t) {
		t.Run(name, func(t *testing.T) {
			adapter := newAdapter(t)
			var locker locking.Locker = locking.NewClient(adapter)
			var applyLocker locking.ApplyLocker = locking.NewApplyClient(adapter, false, false)

			project := models.NewProject("org/repo", "dir", "")
			pull1 := models.PullRequest{Num: 1, BaseRepo: models.Repo{FullName: "org/repo"}}
			pull2 := models.PullRequest{Num: 2, BaseRepo: models.Repo{FullName: "org/repo"}}
			r, err := locker.TryLock(project, "default", pull1, models.User{Username: "a"})
			Ok(t, err)
			Assert(t, r.LockAcquired, "pull 1 should get the lock")
			Equals(t, "org/repo/dir/default/", r.LockKey)
			r, err = locker.TryLock(project, "default", pull2, models.User{Username: "b"})
			Ok(t, err)
			Assert(t, !r.LockAcquired, "pull 2 must not get pull 1's lock")
			Equals(t, 1, r.CurrLock.Pull.Num)

			locks, err := locker.List()
			Ok(t, err)
			Equals(t, 1, len(locks))
			got, err := locker.GetLock("org/repo/dir/default/")
			Ok(t, err)
			Equals(t, 1, got.Pull.Num)
			got, err = locker.Unlock("org/repo/dir/default/")
			Ok(t, err)
			Equals(t, 1, got.Pull.Num)
			got, err = locker.GetLock("org/repo/dir/default/")
			Ok(t, err)
			Assert(t, got == nil, "lock still held after unlock")
			_, err = locker.TryLock(project, "default", pull2, models.User{Username: "b"})
			Ok(t, err)
			released, err := locker.UnlockByPull("org/repo", 2)
			Ok(t, err)
			Equals(t, 1, len(released))

			applyLock, err := applyLocker.LockApply()
			Ok(t, err)
			Assert(t, applyLock.Locked, "global apply lock not taken")
			check, err := applyLocker.CheckApplyLock()
			Ok(t, err)
			Assert(t, check.Locked, "global apply lock not seen")
			Ok(t, applyLocker.UnlockApply())
			check, err = applyLocker.CheckApplyLock()
			Ok(t, err)
			Assert(t, !check.Locked, "global apply lock still held")
		})
	}
}

// TestAdapter_MirrorsIntoLegacy checks where the Redis mode puts a lock:
// upstream's key in Redis, and a copy in BoltDB that unlocks clean.
func TestAdapter_MirrorsIntoLegacy(t *testing.T) {
	client := redistest.Start(t).Client(t)
	legacy := openBolt(t, t.TempDir())
	adapter := newRedisAdapter(t, client, legacy, enhanced.AdapterOptions{})
	lock := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	acquired, _, err := adapter.TryLock(lock)
	Ok(t, err)
	Assert(t, acquired, "lock not acquired")

	val, err := client.Get(context.Background(), "pr/org/repo/dir/default/").Result()
	Ok(t, err)
	Assert(t, strings.Contains(val, `"Num":1`), "redis value %s", val)
	adapter.Flush()
	mirrored, err := legacy.GetLock(lock.Project, lock.Workspace)
	Ok(t, err)
	Assert(t, mirrored != nil && mirrored.Pull.Num == 1, "lock not mirrored into the legacy database")

	_, err = adapter.LockCommand(command.Apply, time.Now())
	Ok(t, err)
	adapter.Flush()
	legacyApply, err := legacy.CheckCommandLock(command.Apply)
	Ok(t, err)
	Assert(t, legacyApply != nil, "global apply lock not mirrored")

	_, err = adapter.Unlock(lock.Project, lock.Workspace)
	Ok(t, err)
	adapter.Flush()
	mirrored, err = legacy.GetLock(lock.Project, lock.Workspace)
	Ok(t, err)
	Assert(t, mirrored == nil, "unlock must clean the legacy database too")
	Ok(t, adapter.UnlockCommand(command.Apply))
	adapter.Flush()
	legacyApply, err = legacy.CheckCommandLock(command.Apply)
	Ok(t, err)
	Assert(t, legacyApply == nil, "global apply unlock not mirrored")
}

// TestAdapter_MixedFleetUnlockByPull: in a fleet that mixes upstream and
// enhanced replicas on one Redis, closing a pull on an enhanced replica also
// releases the locks an upstream replica took for it, which carry no index:
// one an enhanced replica read is indexed at once, the others by the
// background scan. No call scans the keyspace.
func TestAdapter_MixedFleetUnlockByPull(t *testing.T) {
	ctx := context.Background()
	client := redistest.Start(t).Client(t)
	upstreamReplica, err := upstreamredis.NewWithClient(client, "", "")
	Ok(t, err)
	backend := openRedis(t, client)
	adapter := newAdapter(t, guard(t, upstreamReplica), backend, enhanced.AdapterOptions{BackendName: "redis"})
	seen := enhancedtest.NewLock("org/repo", "seen", "default", "", 5)
	scanned := enhancedtest.NewLock("org/repo", "scanned", "default", "", 5)
	otherPull := enhancedtest.NewLock("org/repo", "other", "default", "", 6)
	for _, l := range []models.ProjectLock{seen, scanned, otherPull} {
		acquired, _, err := upstreamReplica.TryLock(l)
		Ok(t, err)
		Assert(t, acquired, "setup lock not acquired")
	}
	byEnhanced := enhancedtest.NewLock("org/repo", "enhanced", "default", "", 5)
	acquired, _, err := adapter.TryLock(byEnhanced)
	Ok(t, err)
	Assert(t, acquired, "lock not acquired")

	acquired, _, err = adapter.TryLock(enhancedtest.NewLock("org/repo", "seen", "default", "", 7))
	Ok(t, err)
	Assert(t, !acquired, "took a lock upstream holds")
	deadline := time.Now().Add(10 * time.Second)
	for !client.SIsMember(ctx, "pull{org/repo::5}", "pr/org/repo/seen/default/").Val() {
		Assert(t, time.Now().Before(deadline), "a lock upstream wrote was not indexed once seen")
		time.Sleep(5 * time.Millisecond)
	}
	_, err = backend.ScanForUnindexedLocks(ctx) // as the background scan does
	Ok(t, err)

	redistest.ResetStats(t, client)
	released, err := adapter.UnlockByPull("org/repo", 5)
	Ok(t, err)
	Equals(t, 3, len(released))
	Equals(t, int64(0), redistest.CommandCount(t, client)["scan"])
	left, err := adapter.List()
	Ok(t, err)
	Equals(t, 1, len(left))
	Equals(t, 6, left[0].Pull.Num)
}

// TestAdapter_FailsClosed stops Redis under a held lock: requests fail with a
// message that says why, nothing is granted, and nothing is lost on restart.
func TestAdapter_FailsClosed(t *testing.T) {
	srv := redistest.Start(t, redistest.WithAppendOnly())
	client := fastClient(t, srv)
	legacy := openBolt(t, t.TempDir())
	adapter := newRedisAdapter(t, client, legacy, enhanced.AdapterOptions{})
	held := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	acquired, _, err := adapter.TryLock(held)
	Ok(t, err)
	Assert(t, acquired, "lock not acquired")

	srv.Stop()
	other := enhancedtest.NewLock("org/repo", "other", "default", "", 2)
	acquired, _, err = adapter.TryLock(other)
	Assert(t, !acquired, "a lock was granted while Redis was down")
	ErrContains(t, "enhanced locking could not lock: redis is unreachable, so no lock was granted", err)
	_, err = adapter.List()
	ErrContains(t, "redis is unreachable", err)
	Equals(t, "redis", adapter.ActiveBackend())

	srv.Restart()
	locks, err := adapter.List()
	Ok(t, err)
	Equals(t, 1, len(locks))
	Equals(t, 1, locks[0].Pull.Num)
	acquired, _, err = adapter.TryLock(other)
	Ok(t, err)
	Assert(t, acquired, "lock not acquired after Redis returned")
}

// TestAdapter_FallbackReconciles falls back to BoltDB while Redis is down and
// checks what happened meanwhile lands in Redis, with a conflict reported
// rather than overwritten.
func TestAdapter_FallbackReconciles(t *testing.T) {
	srv := redistest.Start(t, redistest.WithAppendOnly())
	client := fastClient(t, srv)
	legacy := openBolt(t, t.TempDir())
	collected := &eventstest.Collector{}
	adapter := newRedisAdapter(t, client, legacy, enhanced.AdapterOptions{
		FallbackToLegacy: true,
		Events:           collected,
	})
	// Another replica holds a lock this one's BoltDB knows nothing about.
	otherReplica := openRedis(t, client)
	contested := enhancedtest.NewLock("org/repo", "contested", "default", "", 9)
	acquired, _, err := otherReplica.TryLock(context.Background(), enhancedtest.Request(contested))
	Ok(t, err)
	Assert(t, acquired, "setup lock not acquired")
	before := enhancedtest.NewLock("org/repo", "before", "default", "", 1)
	acquired, _, err = adapter.TryLock(before)
	Ok(t, err)
	Assert(t, acquired, "setup lock not acquired")

	srv.Stop()
	during := enhancedtest.NewLock("org/repo", "during", "default", "", 2)
	acquired, _, err = adapter.TryLock(during)
	Ok(t, err)
	Assert(t, acquired, "fallback should grant a free lock")
	Equals(t, "legacy-fallback", adapter.ActiveBackend())
	_, err = adapter.Unlock(before.Project, before.Workspace)
	Ok(t, err)
	conflicting := contested
	conflicting.Pull.Num = 3
	acquired, _, err = adapter.TryLock(conflicting)
	Ok(t, err)
	Assert(t, acquired, "BoltDB does not know the other replica's lock")

	srv.Restart()
	adapter.BackendHealthChanged(true)
	Equals(t, "redis", adapter.ActiveBackend())
	locks, err := adapter.List()
	Ok(t, err)
	byPath := map[string]int{}
	for _, l := range locks {
		byPath[l.Project.Path] = l.Pull.Num
	}
	Equals(t, map[string]int{"during": 2, "contested": 9}, byPath)

	published := collected.Events()
	var types []events.EventType
	for _, e := range published {
		types = append(types, e.Type)
	}
	Equals(t, []events.EventType{
		events.EventLockAcquired,      // before
		events.EventFallbackActivated, // Redis stopped
		events.EventLockAcquired,      // during, from BoltDB
		events.EventLockReleased,      // before
		events.EventLockAcquired,      // conflicting, from BoltDB
		events.EventLockConflict,      // the replay keeps the other replica's lock
		events.EventFallbackRecovered,
	}, types)
	Equals(t, "legacy", published[1].Backend)
	Assert(t, published[1].Err != nil, "the switch to the fallback should carry its cause")
	Equals(t, 2, published[2].Lock.Pull.Num)
	Equals(t, 1, published[3].Lock.Pull.Num)
	Equals(t, 3, published[5].Lock.Pull.Num)
	Equals(t, 9, published[5].Current.Pull.Num)
	Equals(t, "redis", published[6].Backend)
}

// TestAdapter_RollbackKeepsLocks: enable, lock, disable, restart: the legacy
// database has every lock. Then the reverse: a lock taken while disabled is
// in Redis after enabling again.
func TestAdapter_RollbackKeepsLocks(t *testing.T) {
	client := redistest.Start(t).Client(t)
	dir := t.TempDir()

	legacy, err := boltdb.New(dir)
	Ok(t, err)
	adapter := newRedisAdapter(t, client, legacy, enhanced.AdapterOptions{})
	enabledLock := enhancedtest.NewLock("org/repo", "enabled", "default", "", 1)
	acquired, _, err := adapter.TryLock(enabledLock)
	Ok(t, err)
	Assert(t, acquired, "lock not acquired")
	_, err = adapter.LockCommand(command.Apply, time.Now())
	Ok(t, err)
	Ok(t, adapter.Close()) // the server's shutdown: what is still on its way lands
	Ok(t, legacy.Close())

	// Disabled: upstream alone on the same BoltDB file.
	legacy = openBolt(t, dir)
	lock, err := legacy.GetLock(enabledLock.Project, enabledLock.Workspace)
	Ok(t, err)
	Assert(t, lock != nil && lock.Pull.Num == 1, "lock taken while enabled is missing after rollback")
	applyLock, err := legacy.CheckCommandLock(command.Apply)
	Ok(t, err)
	Assert(t, applyLock != nil, "global apply lock missing after rollback")
	disabledLock := enhancedtest.NewLock("org/repo", "disabled", "default", "", 2)
	acquired, _, err = legacy.TryLock(disabledLock)
	Ok(t, err)
	Assert(t, acquired, "lock not acquired while disabled")

	// Enabled again: the import brings the lock taken while disabled.
	adapter = newRedisAdapter(t, client, legacy, enhanced.AdapterOptions{})
	n, err := adapter.ImportLegacyLocks(context.Background())
	Ok(t, err)
	Equals(t, 2, n)
	n, err = adapter.ImportLegacyLocks(context.Background())
	Ok(t, err)
	Equals(t, 2, n) // idempotent
	locks, err := adapter.List()
	Ok(t, err)
	Equals(t, 2, len(locks))
	other := enhancedtest.NewLock("org/repo", "disabled", "default", "", 3)
	acquired, current, err := adapter.TryLock(other)
	Ok(t, err)
	Assert(t, !acquired, "imported lock was not enforced")
	Equals(t, 2, current.Pull.Num)
}

// TestAdapter_ConcurrentWhileHealthFlips runs lock traffic from many
// goroutines while the backend's health flips, then checks Redis and BoltDB
// agree on who holds what.
func TestAdapter_ConcurrentWhileHealthFlips(t *testing.T) {
	client := redistest.Start(t).Client(t)
	legacy := openBolt(t, t.TempDir())
	adapter := newRedisAdapter(t, client, legacy, enhanced.AdapterOptions{FallbackToLegacy: true})

	const workers, rounds = 8, 50
	var wg sync.WaitGroup
	stop := make(chan struct{})
	go func() {
		healthy := false
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
				adapter.BackendHealthChanged(healthy)
				healthy = !healthy
			}
		}
	}()
	errs := make(chan error, workers*rounds)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				lock := enhancedtest.NewLock("org/repo", fmt.Sprintf("p%d", i%5), "default", "", w+1)
				if _, _, err := adapter.TryLock(lock); err != nil {
					errs <- err
				}
				if i%3 == 0 {
					if _, err := adapter.UnlockByPull("org/repo", w+1); err != nil {
						errs <- err
					}
				}
				if _, err := adapter.List(); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	close(errs)
	for err := range errs {
		Ok(t, err)
	}
	adapter.BackendHealthChanged(true)
	Equals(t, "redis", adapter.ActiveBackend())

	inRedis, err := adapter.List()
	Ok(t, err)
	adapter.Flush()
	inBolt, err := legacy.List()
	Ok(t, err)
	holders := func(locks []models.ProjectLock) map[string]int {
		m := map[string]int{}
		for _, l := range locks {
			m[l.Project.Path] = l.Pull.Num
		}
		return m
	}
	Equals(t, holders(inBolt), holders(inRedis))
}

// TestAdapter_WaitTimeout: with --enhanced-locking-wait-timeout a request for
// a held lock waits for its release instead of failing at once, and the lock
// it is handed is mirrored like any other.
func TestAdapter_WaitTimeout(t *testing.T) {
	client := redistest.Start(t).Client(t)
	legacy := openBolt(t, t.TempDir())
	adapter := newRedisAdapter(t, client, legacy, enhanced.AdapterOptions{WaitTimeout: 10 * time.Second})
	holder := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	acquired, _, err := adapter.TryLock(holder)
	Ok(t, err)
	Assert(t, acquired, "lock not acquired")

	type result struct {
		acquired bool
		current  models.ProjectLock
		err      error
	}
	waited := make(chan result, 1)
	go func() {
		acquired, current, err := adapter.TryLock(enhancedtest.NewLock("org/repo", "dir", "default", "", 2))
		waited <- result{acquired, current, err}
	}()
	// The waiter is queued in Redis before the holder lets go.
	enhancedtest.AwaitQueue(t, openRedis(t, client), holder, 1)
	_, err = adapter.UnlockIfOwnedByPull(holder.Project, holder.Workspace, 1)
	Ok(t, err)

	got := <-waited
	Ok(t, got.err)
	Assert(t, got.acquired, "the waiting pull did not get the released lock")
	Equals(t, 2, got.current.Pull.Num)
	adapter.Flush()
	mirrored, err := legacy.GetLock(holder.Project, holder.Workspace)
	Ok(t, err)
	Assert(t, mirrored != nil && mirrored.Pull.Num == 2, "handed-over lock not mirrored")
}
