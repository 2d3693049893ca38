package backends

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// locker is what a race round needs from one replica.
type locker struct {
	tryLock func(models.ProjectLock) (bool, error)
	unlock  func(models.ProjectLock) error
}

// TestRaceDoubleGrants races replicas, each with its own connection, for one
// lock: every round they all ask for it at once for different pulls, and a
// round in which more than one is granted the lock is a double grant.
// Upstream's RedisDB reads then writes, so it grants twice under this load;
// ours must not.
func TestRaceDoubleGrants(t *testing.T) {
	const replicas, rounds = 8, 1000
	srv := redistest.Start(t)
	ctx := context.Background()

	enhancedReplicas := make([]locker, replicas)
	for i := range enhancedReplicas {
		r := newTestRedis(t, srv.Client(t), RedisOptions{})
		enhancedReplicas[i] = locker{
			tryLock: func(l models.ProjectLock) (bool, error) {
				acquired, _, err := r.TryLock(ctx, enhancedtest.Request(l))
				return acquired, err
			},
			unlock: func(l models.ProjectLock) error {
				_, err := r.UnlockIfOwnedByPull(ctx, l.Project, l.Workspace, l.Pull.Num)
				return err
			},
		}
	}
	enhancedDouble := race(t, enhancedReplicas, rounds)

	flush(t, srv.Client(t))
	upstreamReplicas := make([]locker, replicas)
	for i := range upstreamReplicas {
		db := newUpstreamRedis(t, srv.Client(t))
		upstreamReplicas[i] = locker{
			tryLock: func(l models.ProjectLock) (bool, error) {
				acquired, _, err := db.TryLock(l)
				return acquired, err
			},
			unlock: func(l models.ProjectLock) error {
				_, err := db.Unlock(l.Project, l.Workspace)
				return err
			},
		}
	}
	upstreamDouble := race(t, upstreamReplicas, rounds)

	line := fmt.Sprintf("RACE replicas=%d rounds=%d enhanced-double-grants=%d upstream-redis-double-grants=%d",
		replicas, rounds, enhancedDouble, upstreamDouble)
	t.Log(line)
	fmt.Println(line)
	Equals(t, 0, enhancedDouble)
}

// race runs the rounds and returns how many granted the lock more than once.
// It fails the test if a round grants it to nobody.
func race(t *testing.T, replicas []locker, rounds int) int {
	t.Helper()
	double := 0
	for round := range rounds {
		var (
			start   = make(chan struct{})
			ready   sync.WaitGroup
			done    sync.WaitGroup
			winners []models.ProjectLock
			mu      sync.Mutex
			errs    atomic.Int32
		)
		for i, replica := range replicas {
			lock := enhancedtest.NewLock("org/repo", "dir", "default", "", round*len(replicas)+i+1)
			ready.Add(1)
			done.Add(1)
			go func() {
				defer done.Done()
				ready.Done()
				<-start // the barrier: every replica is parked here before any asks
				acquired, err := replica.tryLock(lock)
				if err != nil {
					t.Errorf("round %d: %v", round, err)
					errs.Add(1)
					return
				}
				if acquired {
					mu.Lock()
					winners = append(winners, lock)
					mu.Unlock()
				}
			}()
		}
		ready.Wait()
		close(start)
		done.Wait()
		if errs.Load() > 0 {
			t.FailNow()
		}
		if len(winners) == 0 {
			t.Fatalf("round %d: nobody got the free lock", round)
		}
		if len(winners) > 1 {
			double++
		}
		// The lock now reads as the last writer's; whoever that is, one
		// release frees it, and the others find nothing to release.
		for _, w := range winners {
			Ok(t, replicas[0].unlock(w))
		}
	}
	return double
}
