package queue_test

import (
	"context"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/petergtz/pegomock/v4"
	"github.com/redis/go-redis/v9"
	vcsmocks "github.com/runatlantis/atlantis/server/events/vcs/mocks"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/queue"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// TestWorker_DeliversAHandOverMadeWhileItWasReconnecting: Redis is killed
// and restarted with its append-only file, and another replica hands a lock
// over before this replica's notice subscription is back, so the hand-over's
// announcement reaches nobody. The worker still delivers it as soon as it
// has resubscribed, not at its next poll.
func TestWorker_DeliversAHandOverMadeWhileItWasReconnecting(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t, redistest.WithAppendOnly())
	other := srv.Client(t)
	Ok(t, other.ConfigSet(ctx, "appendfsync", "always").Err())
	releaser, err := backends.NewRedis(other, backends.RedisOptions{})
	Ok(t, err)
	t.Cleanup(func() { _ = releaser.Close() })

	// This replica reconnects when the test says.
	var gate redistest.DialGate
	opts := srv.Options()
	opts.Dialer = gate.Dial
	client := redis.NewClient(opts)
	t.Cleanup(func() { _ = client.Close() })
	b, err := backends.NewRedis(client, backends.RedisOptions{})
	Ok(t, err)
	t.Cleanup(func() { _ = b.Close() })
	planner := &recordingPlanner{}
	notifier := queue.NewNotifier(b, vcsmocks.NewMockClient(pegomock.WithT(t)), true, nil)
	// Polls and sweeps too rare to deliver anything within the test.
	w := queue.NewWorker(b, notifier, planner, queue.WorkerOptions{AutoPlan: true, Lease: time.Minute, Poll: time.Hour, SweepEvery: time.Hour})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); w.Run(runCtx) }()
	t.Cleanup(func() { stop(); <-done })

	subscribers := func() int64 {
		n, err := other.PubSubNumPat(ctx).Result()
		Ok(t, err)
		return n
	}
	eventually(t, "the worker subscribed to notices", func() bool { return subscribers() == 1 })
	mustLock(t, releaser, pullLock("dir", 1))
	enqueue(t, releaser, pullLock("dir", 2), enhanced.PriorityNormal)

	gate.Shut()
	pid, err := strconv.Atoi(other.InfoMap(ctx, "server").Item("Server", "process_id"))
	Ok(t, err)
	Ok(t, syscall.Kill(pid, syscall.SIGKILL))
	srv.Restart()
	Equals(t, int64(0), subscribers())
	_, err = releaser.Unlock(ctx, pullLock("dir", 1).Project, "default")
	Ok(t, err)
	gate.Open()

	eventually(t, "the hand-over to pull 2 was re-planned", func() bool { return len(planner.planned()) == 1 })
	Equals(t, 2, planner.planned()[0].Pull.Num)
}

// eventually waits for cond, failing after a bound far below the worker's
// poll: a pass cannot come from polling.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
