package chaos

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	coreredis "github.com/atlantis-enhanced/atlantis/server/core/redis"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

const (
	// failovers is how many sentinel failovers each setting is measured over.
	failovers = 3
	// locksPerPhase are taken before the replica falls behind, and as many
	// while it is behind.
	locksPerPhase = 10
)

// TestFailoverLosesAcknowledgedLocks measures what asynchronous replication
// costs enhanced locking: locks are taken through the real client and
// backend while the replica stops receiving the replication stream (as over
// a slow or cut link), then the master is SIGKILLed and the sentinel
// promotes the replica. Without WAIT the master acknowledges those locks and
// the failover loses every one, so another pull is granted each of them;
// with --enhanced-locking-redis-wait-replicas=1 they are refused instead,
// and the failover loses no lock the master acknowledged. Each setting
// prints `REPLICATION ...` with its counts.
func TestFailoverLosesAcknowledgedLocks(t *testing.T) {
	if testing.Short() {
		t.Skip("the chaos suite is skipped in -short mode")
	}
	settings := []int{0, 1}
	var (
		mu     sync.Mutex
		totals = map[int]*failoverCount{}
	)
	// The rounds run at once: each has its own Redis, and mostly waits.
	t.Run("rounds", func(t *testing.T) {
		for _, wait := range settings {
			totals[wait] = &failoverCount{}
			for round := range failovers {
				t.Run(fmt.Sprintf("wait-replicas=%d/%d", wait, round), func(t *testing.T) {
					t.Parallel()
					c := measureFailover(t, wait)
					mu.Lock()
					defer mu.Unlock()
					totals[wait].add(c)
				})
			}
		}
	})
	for _, wait := range settings {
		total := totals[wait]
		fmt.Printf("REPLICATION sentinel-failover wait-replicas=%d failovers=%d acknowledged=%d refused=%d lost=%d granted-again=%d\n",
			wait, failovers, total.acknowledged, total.refused, total.lost, total.grantedAgain)
		if wait == 0 {
			// The window WAIT closes is real, and this measurement sees it.
			Assert(t, total.lost > 0, "without WAIT no acknowledged lock was lost across %d failovers: the measurement is blind", failovers)
			continue
		}
		Equals(t, 0, total.lost)
		Equals(t, 0, total.grantedAgain)
	}
}

// failoverCount is what one or more failovers did to the locks taken.
type failoverCount struct {
	acknowledged, refused, lost, grantedAgain int
}

func (c *failoverCount) add(o failoverCount) {
	c.acknowledged += o.acknowledged
	c.refused += o.refused
	c.lost += o.lost
	c.grantedAgain += o.grantedAgain
}

// measureFailover takes locks before and while the replica falls behind,
// fails the master over, and counts the acknowledged locks the new master
// lacks, and those another pull is then granted.
func measureFailover(t *testing.T, wait int) failoverCount {
	t.Helper()
	ctx := context.Background()
	s := redistest.StartSentinel(t, redistest.WithReplicationLink())
	cfg := coreredis.Config{Mode: coreredis.ModeSentinel, Addrs: s.SentinelAddrs, SentinelMaster: s.MasterName, WaitReplicas: wait}
	client, err := coreredis.NewClient(ctx, cfg)
	Ok(t, err)
	defer client.Close() // nolint: errcheck
	backend, err := backends.NewRedis(client, backends.RedisOptions{})
	Ok(t, err)
	defer backend.Close() // nolint: errcheck

	var (
		mu    sync.Mutex
		count failoverCount
		held  []int
	)
	take := func(from, to int) {
		var wg sync.WaitGroup
		for dir := from; dir < to; dir++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				lockCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				ok, _, err := backend.TryLock(lockCtx, enhanced.LockRequest{Lock: failoverLock(dir, 1)})
				mu.Lock()
				defer mu.Unlock()
				switch {
				case ok && err == nil:
					count.acknowledged++
					held = append(held, dir)
				default:
					count.refused++
				}
			}()
		}
		wg.Wait()
	}
	take(0, locksPerPhase)
	// The replica next acknowledges within a second, and gets nothing more.
	s.Link.DropReplies(true)
	time.Sleep(1500 * time.Millisecond)
	take(locksPerPhase, 2*locksPerPhase)

	s.Master.Kill()
	sc := redis.NewSentinelClient(&redis.Options{Addr: s.SentinelAddrs[0]})
	defer sc.Close() // nolint: errcheck
	deadline := time.Now().Add(failoverTimeout)
	for {
		addr, err := sc.GetMasterAddrByName(ctx, s.MasterName).Result()
		if err == nil && strings.Join(addr, ":") == s.ReplicaAddr {
			break
		}
		Assert(t, time.Now().Before(deadline), "the sentinel did not promote %s within %s (%v, %v)", s.ReplicaAddr, failoverTimeout, addr, err)
		time.Sleep(100 * time.Millisecond)
	}

	// Another replica, which does not wait, asks for every lock the old
	// master acknowledged.
	other, err := coreredis.NewClient(ctx, coreredis.Config{Mode: coreredis.ModeSentinel, Addrs: s.SentinelAddrs, SentinelMaster: s.MasterName})
	Ok(t, err)
	defer other.Close() // nolint: errcheck
	checker, err := backends.NewRedis(other, backends.RedisOptions{})
	Ok(t, err)
	defer checker.Close() // nolint: errcheck
	for _, dir := range held {
		lock := failoverLock(dir, 1)
		current, err := checker.GetLock(ctx, lock.Project, lock.Workspace)
		Ok(t, err)
		if current != nil {
			continue
		}
		count.lost++
		granted, _, err := checker.TryLock(ctx, enhanced.LockRequest{Lock: failoverLock(dir, 2)})
		Ok(t, err)
		if granted {
			count.grantedAgain++
		}
	}
	t.Logf("%d locks acknowledged, %d refused, %d lost in the failover, %d granted again to another pull",
		count.acknowledged, count.refused, count.lost, count.grantedAgain)
	return count
}

// failoverLock is pull's lock of project dir-<n>.
func failoverLock(n, pull int) models.ProjectLock {
	return enhancedtest.NewLock("acme/infra", fmt.Sprintf("dir-%d", n), "default", "", pull)
}
