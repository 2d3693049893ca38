package commandlease_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	. "github.com/runatlantis/atlantis/testing"
	tally "github.com/uber-go/tally/v4"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/commandlease"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

var pull = enhanced.PullRef{RepoFullName: "owner/repo", Num: 3}

// stores are the real stores every behaviour is checked on.
func stores(t *testing.T) map[string]func(t *testing.T) enhanced.CommandLeaseStore {
	client := redistest.Start(t).Client(t)
	return map[string]func(t *testing.T) enhanced.CommandLeaseStore{
		"redis": func(t *testing.T) enhanced.CommandLeaseStore {
			Ok(t, client.FlushAll(context.Background()).Err())
			r, err := backends.NewRedis(client, backends.RedisOptions{})
			Ok(t, err)
			t.Cleanup(func() { _ = r.Close() })
			return r
		},
		"memory": func(*testing.T) enhanced.CommandLeaseStore { return backends.NewMemoryCommandLeases() },
	}
}

func newManager(t *testing.T, store enhanced.CommandLeaseStore, replica string, ttl, wait time.Duration) *commandlease.Manager {
	t.Helper()
	m, err := commandlease.NewManager(store, commandlease.Options{Replica: replica, TTL: ttl, WaitTimeout: wait, Poll: 20 * time.Millisecond})
	Ok(t, err)
	return m
}

func TestManager_CommandsOfOnePullRunOneAtATimeInArrivalOrder(t *testing.T) {
	for name, newStore := range stores(t) {
		t.Run(name, func(t *testing.T) {
			store := newStore(t)
			// Two replicas on one store, as a fleet on one Redis.
			r1 := newManager(t, store, "r1", 10*time.Second, time.Minute)
			r2 := newManager(t, store, "r2", 10*time.Second, time.Minute)
			first, err := r1.Acquire(context.Background(), pull, "plan")
			Ok(t, err)

			var mu sync.Mutex
			var order []string
			var wg sync.WaitGroup
			for i, m := range []*commandlease.Manager{r2, r1, r2} {
				name := []string{"second", "third", "fourth"}[i]
				wg.Add(1)
				go func() {
					defer wg.Done()
					l, err := m.Acquire(context.Background(), pull, name)
					if err != nil {
						t.Errorf("%s: %s", name, err)
						return
					}
					mu.Lock()
					order = append(order, name)
					mu.Unlock()
					time.Sleep(30 * time.Millisecond)
					l.Release()
				}()
				// Each asks after the one before is in line.
				awaitWaiting(t, store, i)
			}
			Equals(t, 0, len(order))
			first.Release()
			wg.Wait()
			Equals(t, []string{"second", "third", "fourth"}, order)
		})
	}
}

// awaitWaiting waits until n commands wait behind the holder.
func awaitWaiting(t *testing.T, store enhanced.CommandLeaseStore, n int) {
	t.Helper()
	probe := enhanced.CommandLeaseRequest{Pull: pull, Token: "probe", TTL: time.Second, WaiterTTL: time.Millisecond}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		state, err := store.TryCommandLease(context.Background(), probe)
		Ok(t, err)
		Assert(t, !state.Granted, "the probe must never hold the lease")
		Ok(t, store.ReleaseCommandLease(context.Background(), pull, "probe"))
		if state.Ahead == n+1 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("never saw %d waiters", n+1)
}

func TestManager_WaitRunsOutWithTheHolderNamed(t *testing.T) {
	for name, newStore := range stores(t) {
		t.Run(name, func(t *testing.T) {
			store := newStore(t)
			holder, err := newManager(t, store, "r1", 10*time.Second, time.Minute).Acquire(context.Background(), pull, "apply")
			Ok(t, err)
			defer holder.Release()
			scope := tally.NewTestScope("", nil)
			waiting, err := commandlease.NewManager(store, commandlease.Options{Replica: "r2", TTL: 10 * time.Second, WaitTimeout: 200 * time.Millisecond, Poll: 20 * time.Millisecond, Scope: scope})
			Ok(t, err)
			_, err = waiting.Acquire(context.Background(), pull, "plan")
			counters := scope.Snapshot().Counters()
			Equals(t, int64(1), counters["command_lease.waits_total+"].Value())
			Equals(t, int64(1), counters["command_lease.refused_total+"].Value())
			var timeout *commandlease.WaitTimeoutError
			Assert(t, errors.As(err, &timeout), "want a wait timeout, got %v", err)
			Equals(t, "apply", timeout.Holder.Command)
			Equals(t, "r1", timeout.Holder.Replica)
			// The refused command left the line: the next one is first.
			state, err := store.TryCommandLease(context.Background(), enhanced.CommandLeaseRequest{Pull: pull, Token: "next", TTL: time.Second, WaiterTTL: time.Second})
			Ok(t, err)
			Equals(t, 0, state.Ahead)
		})
	}
}

func TestManager_HeartbeatKeepsTheLeasePastItsTTL(t *testing.T) {
	for name, newStore := range stores(t) {
		t.Run(name, func(t *testing.T) {
			store := newStore(t)
			// Long enough that a stalled machine does not miss two renewals.
			const ttl = 2 * time.Second
			l, err := newManager(t, store, "r1", ttl, time.Minute).Acquire(context.Background(), pull, "plan")
			Ok(t, err)
			defer l.Release()
			time.Sleep(5 * ttl / 2)
			Ok(t, l.Err())
			state, err := store.TryCommandLease(context.Background(), enhanced.CommandLeaseRequest{Pull: pull, Token: "other", TTL: ttl, WaiterTTL: ttl})
			Ok(t, err)
			Assert(t, !state.Granted, "renewed leases are never granted to another command")
		})
	}
}

// unreachable is a store whose renewals fail, as when this replica is cut
// off from Redis while the command runs.
type unreachable struct {
	enhanced.CommandLeaseStore
	cut chan struct{}
}

func (u unreachable) RenewCommandLease(ctx context.Context, p enhanced.PullRef, token string, ttl time.Duration) (bool, error) {
	select {
	case <-u.cut:
		return false, enhanced.ErrBackendUnavailable
	default:
		return u.CommandLeaseStore.RenewCommandLease(ctx, p, token, ttl)
	}
}

// The fencing invariant: a replica cut off from Redis gives its lease up
// before Redis can grant it to anyone else.
func TestManager_ACutOffReplicaGivesUpBeforeRedisExpiresTheLease(t *testing.T) {
	client := redistest.Start(t).Client(t)
	r, err := backends.NewRedis(client, backends.RedisOptions{})
	Ok(t, err)
	defer r.Close() // nolint: errcheck
	store := unreachable{CommandLeaseStore: r, cut: make(chan struct{})}
	const ttl = time.Second
	m := newManager(t, store, "r1", ttl, time.Minute)
	l, err := m.Acquire(context.Background(), pull, "plan")
	Ok(t, err)
	close(store.cut)
	<-l.Lost()
	Equals(t, commandlease.ErrLeaseLost, l.Err())
	keys := leaseKeys(t, client)
	Equals(t, 1, len(keys))
	pttl, err := client.PTTL(context.Background(), keys[0]).Result()
	Ok(t, err)
	// Not a timing goal: the margin is a fifth of the TTL by construction, and
	// any margin at all keeps the invariant.
	Assert(t, pttl > 0, "Redis must still hold the lease when the replica gives it up (PTTL %s)", pttl)
	Assert(t, errors.Is(m.Check(pull.RepoFullName, pull.Num), commandlease.ErrLeaseLost), "the adapter's check fences the pull")
	Ok(t, m.Check(pull.RepoFullName, pull.Num+1))
	l.Release()
	Ok(t, m.Check(pull.RepoFullName, pull.Num))
}

func leaseKeys(t *testing.T, client redis.UniversalClient) []string {
	t.Helper()
	keys, err := client.Keys(context.Background(), "cmdlease{*").Result()
	Ok(t, err)
	return keys
}

// faulty is a store whose renewals fail while on is set: they answer that
// another token holds the lease (stolen, as after this replica was paused
// past the TTL) or hang until their deadline (as when the connection to Redis
// stalls).
type faulty struct {
	enhanced.CommandLeaseStore
	hang bool
	on   *atomic.Bool
}

func newStolen() faulty  { return newFaulty(false) }
func newHanging() faulty { return newFaulty(true) }

func newFaulty(hang bool) faulty {
	f := faulty{CommandLeaseStore: backends.NewMemoryCommandLeases(), hang: hang, on: &atomic.Bool{}}
	f.on.Store(true)
	return f
}

func (f faulty) RenewCommandLease(ctx context.Context, p enhanced.PullRef, token string, ttl time.Duration) (bool, error) {
	switch {
	case !f.on.Load():
		return f.CommandLeaseStore.RenewCommandLease(ctx, p, token, ttl)
	case f.hang:
		<-ctx.Done()
		return false, ctx.Err()
	default:
		return false, nil
	}
}

// A lease lost because the store gave it away, or because renewals hung past
// its deadline, is noticed; a command of this replica granted the lease next
// waits for the lost one to return, and the fence stays closed until it has.
func TestManager_ALostLeaseIsNoticedAndItsCommandWaitedFor(t *testing.T) {
	for name, store := range map[string]faulty{"stolen": newStolen(), "hanging": newHanging()} {
		t.Run(name, func(t *testing.T) {
			// Long enough that a loaded machine renews the next lease in time.
			const ttl = time.Second
			scope := tally.NewTestScope("", nil)
			m, err := commandlease.NewManager(store, commandlease.Options{Replica: "r1", TTL: ttl, WaitTimeout: time.Minute, Poll: 20 * time.Millisecond, Scope: scope})
			Ok(t, err)
			l, err := m.Acquire(context.Background(), pull, "plan")
			Ok(t, err)
			<-l.Lost()
			store.on.Store(false)
			Equals(t, commandlease.ErrLeaseLost, l.Err())
			Equals(t, int64(1), scope.Snapshot().Counters()["command_lease.lost_total+"].Value())

			// The store grants the lease again once it expires there, after a
			// TTL; this replica's next command still waits.
			next := make(chan *commandlease.Lease)
			go func() {
				n, err := m.Acquire(context.Background(), pull, "apply")
				if err != nil {
					t.Errorf("next: %s", err)
				}
				next <- n
			}()
			time.Sleep(3 * ttl)
			select {
			case <-next:
				t.Fatal("a command started while one that lost the lease still ran")
			default:
			}
			Assert(t, errors.Is(m.Check(pull.RepoFullName, pull.Num), commandlease.ErrLeaseLost), "fenced while the lost command runs")
			l.Release()
			n := <-next
			Assert(t, n != nil, "the next command runs once the lost one returns")
			Ok(t, m.Check(pull.RepoFullName, pull.Num))
			n.Release()
		})
	}
}

func TestNewManager_RejectsBadDurations(t *testing.T) {
	for _, c := range []struct {
		ttl, wait time.Duration
		want      string
	}{
		{0, time.Minute, "TTL must be positive"},
		{time.Second, -time.Second, "wait timeout must be positive"},
	} {
		_, err := commandlease.NewManager(backends.NewMemoryCommandLeases(), commandlease.Options{TTL: c.ttl, WaitTimeout: c.wait})
		ErrContains(t, c.want, err)
	}
}

// down is a store that cannot be reached at all.
type down struct{ enhanced.CommandLeaseStore }

func (down) TryCommandLease(context.Context, enhanced.CommandLeaseRequest) (enhanced.CommandLeaseState, error) {
	return enhanced.CommandLeaseState{}, enhanced.ErrBackendUnavailable
}

// A store out of reach fails the command closed after one TTL, not at the
// end of the (much longer) wait, and not as a wait timeout.
func TestManager_AStoreOutOfReachFailsClosedAfterATTL(t *testing.T) {
	m, err := commandlease.NewManager(down{backends.NewMemoryCommandLeases()}, commandlease.Options{TTL: time.Second, WaitTimeout: time.Hour, Poll: 20 * time.Millisecond})
	Ok(t, err)
	done := make(chan error, 1)
	go func() {
		_, err := m.Acquire(context.Background(), pull, "plan")
		done <- err
	}()
	select {
	case err := <-done:
		Assert(t, errors.Is(err, enhanced.ErrBackendUnavailable), "want the store's error, got %v", err)
		var timeout *commandlease.WaitTimeoutError
		Assert(t, !errors.As(err, &timeout), "a store out of reach is not a wait timeout: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("Acquire kept waiting on a store out of reach")
	}
}

// The fence closes at the lease's local deadline, read on the clock at each
// check, even while the heartbeat is stuck in a renewal that hangs past it.
func TestManager_TheFenceClosesAtTheDeadlineWhileRenewalsHang(t *testing.T) {
	store := newHanging()
	const ttl = 900 * time.Millisecond
	m := newManager(t, store, "r1", ttl, time.Minute)
	l, err := m.Acquire(context.Background(), pull, "plan")
	Ok(t, err)
	defer l.Release()
	Ok(t, m.Check(pull.RepoFullName, pull.Num))
	// From 2/3 of the TTL to the whole TTL the heartbeat waits on its second
	// renewal; the deadline, 4/5 of the TTL, falls inside.
	time.Sleep(ttl * 17 / 20)
	Assert(t, errors.Is(m.Check(pull.RepoFullName, pull.Num), commandlease.ErrLeaseLost),
		"the fence must be closed past the lease's deadline")
	Equals(t, commandlease.ErrLeaseLost, l.Err())
	select {
	case <-l.Lost():
	case <-time.After(ttl):
		t.Fatal("the loss was not announced at the deadline")
	}
}
