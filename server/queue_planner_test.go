package server

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/core/boltdb"
	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/commandlease"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/queue"
)

// unrenewable is a lease store that has lost every lease it is asked to
// renew, as after the holder was cut off past its TTL.
type unrenewable struct {
	enhanced.CommandLeaseStore
}

func (unrenewable) RenewCommandLease(context.Context, enhanced.PullRef, string, time.Duration) (bool, error) {
	return false, nil
}

// TestCommandPlanner_SaysWhetherTheReplanRanToItsEnd: the queue worker
// plans again only what the planner says did not run to its end; the plan
// starts only once the pull's command lease is held and start agreed.
func TestCommandPlanner_SaysWhetherTheReplanRanToItsEnd(t *testing.T) {
	refusal := errors.New("the claim was lost")
	cases := []struct {
		name string
		// otherHolds has another command hold the pull's lease throughout.
		otherHolds  bool
		wait        time.Duration
		lost        bool
		cancel      bool
		startErr    error
		ran         bool
		interrupted bool
		told        int
	}{
		{name: "it ran", ran: true},
		{name: "start refused: nothing ran", startErr: refusal},
		{name: "the lease was lost while it ran: interrupted", lost: true, ran: true, interrupted: true},
		{name: "the worker stopped while it waited for the lease: interrupted, nobody told", otherHolds: true, cancel: true, interrupted: true},
		{name: "another command kept the lease for the whole wait: refused, the pull told", otherHolds: true, wait: 100 * time.Millisecond, told: 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var store enhanced.CommandLeaseStore = backends.NewMemoryCommandLeases()
			pull := enhanced.PullRef{RepoFullName: "org/repo", Num: 5}
			if c.otherHolds {
				other, err := commandlease.NewManager(store, commandlease.Options{Replica: "other", TTL: 10 * time.Second, WaitTimeout: time.Minute})
				Ok(t, err)
				held, err := other.Acquire(t.Context(), pull, "atlantis apply")
				Ok(t, err)
				defer held.Release()
			}
			if c.lost {
				store = unrenewable{store}
			}
			wait := time.Minute
			if c.wait > 0 {
				wait = c.wait
			}
			comments := &recordedComments{}
			runner := newTestLeasedRunner(t, store, comments, wait)
			if c.lost {
				leases, err := commandlease.NewManager(store, commandlease.Options{Replica: "test", TTL: 300 * time.Millisecond, WaitTimeout: time.Minute})
				Ok(t, err)
				runner.leases = leases
			}
			ran := false
			runner.next = runFunc(func() {
				ran = true
				if c.lost {
					time.Sleep(time.Second)
				}
			})
			database, err := boltdb.New(t.TempDir())
			Ok(t, err)
			defer database.Close() // nolint: errcheck
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			if c.cancel {
				time.AfterFunc(100*time.Millisecond, cancel)
			}
			lock := models.ProjectLock{Project: models.NewProject("org/repo", "dir", ""), Workspace: "default",
				Pull: models.PullRequest{Num: 5, BaseRepo: models.Repo{FullName: "org/repo"}}}
			started := false
			err = commandPlanner{leases: runner, pulls: database}.Replan(ctx, lock, func() error {
				started = true
				leases, err := store.CommandLeases(t.Context())
				Ok(t, err)
				Assert(t, len(leases) == 1 && leases[0].Replica == "test", "start was called without the pull's command lease: %v", leases)
				return c.startErr
			})
			Equals(t, c.ran, ran)
			Equals(t, c.ran || c.startErr != nil, started)
			Equals(t, c.interrupted, errors.Is(err, queue.ErrReplanInterrupted))
			Equals(t, c.told, len(comments.comments))
			if c.startErr != nil {
				Assert(t, errors.Is(err, c.startErr), "start's error was not returned: %v", err)
			}
			// A plan that ran without a recorded status is reported failed,
			// as upstream's status tells.
			Assert(t, err != nil, "no plan status was recorded, yet no error")
		})
	}
}
