package deadlock_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/deadlock"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// BenchmarkGraph_Deadlocks is the detector's own work on a busy fleet's
// queues: 2000 held locks of 500 pulls, each queue three entries deep.
func BenchmarkGraph_Deadlocks(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 2))
	var queues []enhanced.LockQueue
	for l := range 2000 {
		queues = append(queues, q(fmt.Sprintf("dir%d", l), 1+r.IntN(500), 1+r.IntN(500), 1+r.IntN(500), 1+r.IntN(500)))
	}
	found := 0
	for b.Loop() {
		found = len(deadlock.NewGraph(queues).Deadlocks())
	}
	b.ReportMetric(float64(found), "deadlocks")
}

// BenchmarkDetector_Check is one check on a real Redis holding 200 queued
// locks in chains (no deadlock): what every replica pays at every interval.
func BenchmarkDetector_Check(b *testing.B) {
	srv := redistest.Start(b)
	backend, err := backends.NewRedis(srv.Client(b), backends.RedisOptions{})
	Ok(b, err)
	b.Cleanup(func() { _ = backend.Close() })
	ctx := context.Background()
	for i := 1; i <= 200; i++ {
		acquired, _, err := backend.TryLock(ctx, enhanced.LockRequest{Lock: pullLock(dir(i), i)})
		Ok(b, err)
		Assert(b, acquired, "lock not taken")
		for _, waiter := range []int{i + 1, i + 2} {
			_, err := backend.Enqueue(ctx, enhancedtest.QueueRequest(pullLock(dir(i), waiter), enhanced.PriorityNormal, time.Hour))
			Ok(b, err)
		}
	}
	d, err := deadlock.NewDetector(backend, backend, &comments{}, deadlock.Options{})
	Ok(b, err)
	for b.Loop() {
		outcomes, err := d.Check(ctx)
		Ok(b, err)
		Assert(b, len(outcomes) == 0, "a deadlock in chains")
	}
}
