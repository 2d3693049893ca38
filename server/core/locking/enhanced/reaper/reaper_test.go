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
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/events"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/events/eventstest"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/legacydb"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/queue"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/reaper"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// vcsStandIn answers what the VCS says of each pull; pulls it does not know
// are open. fail makes every answer an error. block, when set, holds every
// answer until it is closed. answered, when set, runs once an answer is
// decided and before it reaches the reaper.
type vcsStandIn struct {
	mu       sync.Mutex
	states   map[int]reaper.PullState
	fail     error
	block    chan struct{}
	answered func(pullNum int, state reaper.PullState)
	asked    []time.Time
}

func (v *vcsStandIn) PullState(_ models.Repo, pullNum int) (reaper.PullState, error) {
	v.mu.Lock()
	v.asked = append(v.asked, time.Now())
	block, state, fail, answered := v.block, v.states[pullNum], v.fail, v.answered
	v.mu.Unlock()
	if block != nil {
		<-block
	}
	if answered != nil {
		answered(pullNum, state)
	}
	return state, fail
}

func (v *vcsStandIn) set(pullNum int, state reaper.PullState) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.states[pullNum] = state
}

// replica is one Atlantis replica's locking on a shared Redis.
type replica struct {
	adapter *enhanced.Adapter
	backend *backends.Redis
	leases  *commandlease.Manager
	// commands is the manager the replica's commands take their pulls'
	// leases from; commandScope counts its waits.
	commands     *commandlease.Manager
	commandScope tally.TestScope
}

func newReplica(t *testing.T, srv *redistest.Server) replica {
	t.Helper()
	b, err := backends.NewRedis(srv.Client(t), backends.RedisOptions{})
	Ok(t, err)
	legacyDB, err := boltdb.New(t.TempDir())
	Ok(t, err)
	legacy, err := legacydb.Guard(legacyDB, legacydb.Options{})
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
	scope := tally.NewTestScope("", nil)
	commands, err := commandlease.NewManager(b, commandlease.Options{TTL: 10 * time.Second, WaitTimeout: time.Minute, Scope: scope})
	Ok(t, err)
	return replica{adapter: a, backend: b, leases: leases, commands: commands, commandScope: scope}
}

func newReaper(t *testing.T, r replica, vcs reaper.PullStates, opts reaper.Options) *reaper.Reaper {
	t.Helper()
	if opts.Interval == 0 {
		opts.Interval = time.Hour
	}
	if opts.CallsPerSecond == 0 {
		opts.CallsPerSecond = 1000
	}
	rp, err := reaper.New(r.adapter, r.backend, vcs, reaper.Leases{Turn: r.leases, Pulls: r.commands}, opts)
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
	heard := &eventstest.Collector{}

	res, err := newReaper(t, r, vcs, reaper.Options{Events: heard}).Pass(context.Background())
	Ok(t, err)
	Equals(t, 5, res.Checked)
	Equals(t, 2, len(res.Released))
	Equals(t, 1, holder(t, r, open))
	Equals(t, 0, holder(t, r, closed))
	Equals(t, 5, holder(t, r, merged)) // handed to the head of its queue
	entries, err := r.backend.PullEntries(context.Background(), "org/repo", 4)
	Ok(t, err)
	Equals(t, 0, len(entries))
	Equals(t, 2, len(heard.OfType(events.EventLockReaped)))
}

// TestReaper_KeepsTheLocksOfAPullReopenedAndPlannedAsItIsChecked: the VCS
// answers that the pull is closed, and right then the pull is reopened and
// planned again. The plan's new lock survives the pass: the plan cannot run
// between the answer and the release, which are made under the pull's
// command lease, so it runs once the old locks are released.
func TestReaper_KeepsTheLocksOfAPullReopenedAndPlannedAsItIsChecked(t *testing.T) {
	r := newReplica(t, redistest.Start(t))
	old := lock(t, r, "old", 2)
	fresh := enhancedtest.NewLock("org/repo", "new", "default", "", 2)
	planned := make(chan struct{})
	vcs := &vcsStandIn{states: map[int]reaper.PullState{2: reaper.PullClosed}}
	var reopen sync.Once
	vcs.answered = func(pullNum int, state reaper.PullState) {
		reopen.Do(func() {
			vcs.set(2, reaper.PullOpen)
			go func() {
				defer close(planned)
				lease, err := r.commands.Acquire(context.Background(), enhanced.PullRef{RepoFullName: "org/repo", Num: 2}, "plan")
				if err != nil {
					t.Errorf("the plan did not run: %s", err)
					return
				}
				defer lease.Release()
				if acquired, _, err := r.adapter.TryLock(fresh); err != nil || !acquired {
					t.Errorf("the plan did not take its lock: acquired=%v err=%v", acquired, err)
				}
			}()
			// The answer reaches the reaper once the plan has run or waits
			// for the pull's lease.
			waits := func() int64 {
				c := r.commandScope.Snapshot().Counters()["command_lease.waits_total+"]
				if c == nil {
					return 0
				}
				return c.Value()
			}
			for deadline := time.Now().Add(30 * time.Second); waits() == 0; {
				select {
				case <-planned:
					return
				case <-time.After(5 * time.Millisecond):
				}
				if time.Now().After(deadline) {
					t.Errorf("the plan neither ran nor waited for the pull's lease")
					return
				}
			}
		})
	}

	res, err := newReaper(t, r, vcs, reaper.Options{}).Pass(context.Background())
	Ok(t, err)
	<-planned
	Equals(t, 0, holder(t, r, old))
	Equals(t, 2, holder(t, r, fresh))
	Equals(t, 1, len(res.Released))
}

// A pull whose command keeps running past the reaper's wait is neither asked
// about nor released in this pass.
func TestReaper_LeavesAPullWhoseCommandRunsToTheNextPass(t *testing.T) {
	r := newReplica(t, redistest.Start(t))
	closed := lock(t, r, "closed", 2)
	running, err := r.commands.Acquire(context.Background(), enhanced.PullRef{RepoFullName: "org/repo", Num: 2}, "apply")
	Ok(t, err)
	defer running.Release()
	vcs := &vcsStandIn{states: map[int]reaper.PullState{2: reaper.PullClosed}}
	res, err := newReaper(t, r, vcs, reaper.Options{CommandWait: 100 * time.Millisecond}).Pass(context.Background())
	Ok(t, err)
	Equals(t, 0, len(res.Released))
	Equals(t, 0, len(vcs.asked))
	Equals(t, 2, holder(t, r, closed))
}

func TestReaper_DryRunReleasesNothing(t *testing.T) {
	r := newReplica(t, redistest.Start(t))
	closed := lock(t, r, "closed", 2)
	scope := tally.NewTestScope("", nil)
	res, err := newReaper(t, r, &vcsStandIn{states: map[int]reaper.PullState{2: reaper.PullClosed}}, reaper.Options{DryRun: true, Scope: scope}).Pass(context.Background())
	Ok(t, err)
	Equals(t, 1, len(res.Released))
	Equals(t, 2, holder(t, r, closed))
	Equals(t, int64(1), scope.Snapshot().Counters()["locks_reap_candidates_total+"].Value())
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
	_, err := reaper.New(nil, nil, nil, reaper.Leases{}, reaper.Options{Interval: 0, CallsPerSecond: 1})
	ErrContains(t, "interval must be positive", err)
	_, err = reaper.New(nil, nil, nil, reaper.Leases{}, reaper.Options{Interval: time.Hour, CallsPerSecond: 0})
	ErrContains(t, "rate must be positive", err)
	_, err = reaper.New(nil, nil, nil, reaper.Leases{}, reaper.Options{Interval: time.Hour, CallsPerSecond: 1})
	ErrContains(t, "needs the command leases", err)
}
