package reaper_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/petergtz/pegomock/v4"
	"github.com/runatlantis/atlantis/server/core/boltdb"
	"github.com/runatlantis/atlantis/server/events/models"
	vcsmocks "github.com/runatlantis/atlantis/server/events/vcs/mocks"
	"github.com/runatlantis/atlantis/server/logging"
	. "github.com/runatlantis/atlantis/testing"
	tally "github.com/uber-go/tally/v4"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/commandlease"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/legacydb"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/queue"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/reaper"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// vcsStandIn answers what the VCS says of each pull; pulls it does not know
// are open. fail makes every answer an error. block, when set, holds every
// answer until it is closed.
type vcsStandIn struct {
	mu     sync.Mutex
	states map[int]reaper.PullState
	fail   error
	block  chan struct{}
	asked  []time.Time
}

func (v *vcsStandIn) PullState(_ models.Repo, pullNum int) (reaper.PullState, error) {
	v.mu.Lock()
	v.asked = append(v.asked, time.Now())
	block, state, fail := v.block, v.states[pullNum], v.fail
	v.mu.Unlock()
	if block != nil {
		<-block
	}
	return state, fail
}

// replica is one Atlantis replica's locking on a shared Redis.
type replica struct {
	adapter *enhanced.Adapter
	backend *backends.Redis
	leases  *commandlease.Manager
}

func newReplica(t *testing.T, srv *redistest.Server) replica {
	t.Helper()
	b, err := backends.NewRedis(srv.Client(t), backends.RedisOptions{})
	Ok(t, err)
	legacyDB, err := boltdb.New(t.TempDir())
	Ok(t, err)
	legacy, err := legacydb.Guard(legacyDB)
	Ok(t, err)
	vcs := vcsmocks.NewMockClient(pegomock.WithT(t))
	policy := queue.NewPolicy(queue.DefaultRules(), time.Hour, queue.NewNotifier(b, vcs, false, logging.NewNoopLogger(t)))
	a := enhanced.NewAdapter(legacy, b, enhanced.AdapterOptions{BackendName: "redis", Queue: policy, Logger: logging.NewNoopLogger(t)})
	t.Cleanup(func() {
		policy.Wait()
		_ = a.Close()
		_ = legacyDB.Close()
	})
	leases, err := commandlease.NewManager(b, commandlease.Options{TTL: 10 * time.Second, WaitTimeout: 200 * time.Millisecond})
	Ok(t, err)
	return replica{adapter: a, backend: b, leases: leases}
}

func newReaper(t *testing.T, r replica, vcs reaper.PullStates, opts reaper.Options) *reaper.Reaper {
	t.Helper()
	if opts.Interval == 0 {
		opts.Interval = time.Hour
	}
	if opts.CallsPerSecond == 0 {
		opts.CallsPerSecond = 1000
	}
	rp, err := reaper.New(r.adapter, r.backend, vcs, r.leases, opts)
	Ok(t, err)
	return rp
}

func lock(t *testing.T, r replica, dir string, pull int) models.ProjectLock {
	t.Helper()
	l := enhancedtest.NewLock("org/repo", dir, "default", "", pull)
	acquired, _, err := r.adapter.TryLock(l)
	Ok(t, err)
	Assert(t, acquired, "%s for #%d not acquired", dir, pull)
	return l
}

func holder(t *testing.T, r replica, l models.ProjectLock) int {
	t.Helper()
	got, err := r.adapter.GetLock(l.Project, l.Workspace)
	Ok(t, err)
	if got == nil {
		return 0
	}
	return got.Pull.Num
}

func TestReaper_ReleasesTheLocksOfClosedAndMergedPullsOnly(t *testing.T) {
	r := newReplica(t, redistest.Start(t))
	open := lock(t, r, "open", 1)
	closed := lock(t, r, "closed", 2)
	merged := lock(t, r, "merged", 3)
	// #4, closed, waits in the queue of the open pull's lock; #5 waits
	// behind merged #3 and gets its lock.
	_, err := r.backend.Enqueue(context.Background(), enhancedtest.QueueRequest(enhancedtest.NewLock("org/repo", "open", "default", "", 4), enhanced.PriorityNormal, time.Hour))
	Ok(t, err)
	_, err = r.backend.Enqueue(context.Background(), enhancedtest.QueueRequest(enhancedtest.NewLock("org/repo", "merged", "default", "", 5), enhanced.PriorityNormal, time.Hour))
	Ok(t, err)
	vcs := &vcsStandIn{states: map[int]reaper.PullState{2: reaper.PullClosed, 3: reaper.PullMerged, 4: reaper.PullClosed}}
	scope := tally.NewTestScope("", nil)

	res, err := newReaper(t, r, vcs, reaper.Options{Scope: scope}).Pass(context.Background())
	Ok(t, err)
	Equals(t, 5, res.Checked)
	Equals(t, 2, len(res.Released))
	Equals(t, 1, holder(t, r, open))
	Equals(t, 0, holder(t, r, closed))
	Equals(t, 5, holder(t, r, merged)) // handed to the head of its queue
	entries, err := r.backend.PullEntries(context.Background(), "org/repo", 4)
	Ok(t, err)
	Equals(t, 0, len(entries))
	Equals(t, int64(2), scope.Snapshot().Counters()["locks_reaped_total+mode=release"].Value())
}

func TestReaper_DryRunReleasesNothing(t *testing.T) {
	r := newReplica(t, redistest.Start(t))
	closed := lock(t, r, "closed", 2)
	scope := tally.NewTestScope("", nil)
	res, err := newReaper(t, r, &vcsStandIn{states: map[int]reaper.PullState{2: reaper.PullClosed}}, reaper.Options{DryRun: true, Scope: scope}).Pass(context.Background())
	Ok(t, err)
	Equals(t, 1, len(res.Released))
	Equals(t, 2, holder(t, r, closed))
	Equals(t, int64(1), scope.Snapshot().Counters()["locks_reaped_total+mode=dry-run"].Value())
}

func TestReaper_AVCSErrorLeavesTheLocks(t *testing.T) {
	r := newReplica(t, redistest.Start(t))
	closed := lock(t, r, "closed", 2)
	vcs := &vcsStandIn{states: map[int]reaper.PullState{2: reaper.PullClosed}, fail: errors.New("rate limited")}
	res, err := newReaper(t, r, vcs, reaper.Options{}).Pass(context.Background())
	Ok(t, err)
	Equals(t, 0, len(res.Released))
	Equals(t, 2, holder(t, r, closed))
}

// Two replicas' reapers start a pass at once: one reaps, the other skips.
func TestReaper_OneReplicaReapsAtATime(t *testing.T) {
	srv := redistest.Start(t)
	r1, r2 := newReplica(t, srv), newReplica(t, srv)
	lock(t, r1, "closed", 2)
	vcs := &vcsStandIn{states: map[int]reaper.PullState{2: reaper.PullClosed}, block: make(chan struct{})}
	first := make(chan reaper.Result)
	go func() {
		res, err := newReaper(t, r1, vcs, reaper.Options{}).Pass(context.Background())
		if err != nil {
			t.Errorf("first pass: %s", err)
		}
		first <- res
	}()
	// The first pass holds the reaper's lease once it asks the VCS.
	deadline := time.Now().Add(30 * time.Second)
	for {
		vcs.mu.Lock()
		n := len(vcs.asked)
		vcs.mu.Unlock()
		if n > 0 {
			break
		}
		Assert(t, time.Now().Before(deadline), "the first pass never asked the VCS")
		time.Sleep(5 * time.Millisecond)
	}
	second, err := newReaper(t, r2, vcs, reaper.Options{}).Pass(context.Background())
	Ok(t, err)
	Assert(t, second.Skipped, "the second replica reaped while the first did: %+v", second)
	close(vcs.block)
	Equals(t, 1, len((<-first).Released))
}

// The VCS is asked at the configured rate at most.
func TestReaper_KeepsToItsRate(t *testing.T) {
	r := newReplica(t, redistest.Start(t))
	for pull := 1; pull <= 5; pull++ {
		lock(t, r, fmt.Sprintf("dir%d", pull), pull)
	}
	vcs := &vcsStandIn{}
	const rate = 20.0
	_, err := newReaper(t, r, vcs, reaper.Options{CallsPerSecond: rate}).Pass(context.Background())
	Ok(t, err)
	Equals(t, 5, len(vcs.asked))
	// A lower bound: a slow machine only makes the calls further apart.
	spent := vcs.asked[4].Sub(vcs.asked[0])
	Assert(t, spent >= time.Duration(3.5*float64(time.Second)/rate), "5 calls in %s at %g a second", spent, rate)
}

func TestNew_RejectsBadOptions(t *testing.T) {
	_, err := reaper.New(nil, nil, nil, nil, reaper.Options{Interval: 0, CallsPerSecond: 1})
	ErrContains(t, "interval must be positive", err)
	_, err = reaper.New(nil, nil, nil, nil, reaper.Options{Interval: time.Hour, CallsPerSecond: 0})
	ErrContains(t, "rate must be positive", err)
}
