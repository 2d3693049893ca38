package server

import (
	"context"
	"fmt"
	"path/filepath"

	upstream "github.com/runatlantis/atlantis/server"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/queue"
)

// queueFile, in the data dir, holds the BoltDB backend's durable queues.
const queueFile = "enhanced-locking-queue.db"

// queueFileOpener is a backend that keeps its queues in a file of its own
// (the BoltDB backend's, beside upstream's atlantis.db).
type queueFileOpener interface {
	OpenQueues(path string) error
}

// lockQueue is the priority queue's running parts.
type lockQueue struct {
	backend enhanced.QueueBackend
	policy  *queue.Policy
	worker  *queue.Worker
	cancel  context.CancelFunc
	done    chan struct{}
}

// newLockQueue builds the queue for --enhanced-locking-priority-queue: the
// rules, checked now so a bad file stops the start with its line numbers,
// the policy the adapter asks, and the worker that delivers hand-overs.
// The worker starts with Start.
func (s *Server) newLockQueue(userConfig upstream.UserConfig, backend *lockBackend, leases *leasedCommandRunner) (*lockQueue, error) {
	f := s.Config.Features
	if !f.PriorityQueue {
		return nil, nil
	}
	rules, err := queue.LoadRules(f.PriorityRulesFile)
	if err != nil {
		return nil, fmt.Errorf("invalid --enhanced-locking-priority-rules: %w", err)
	}
	if opener, ok := backend.Backend.(queueFileOpener); ok {
		if err := opener.OpenQueues(filepath.Join(userConfig.DataDir, queueFile)); err != nil {
			return nil, fmt.Errorf("enhanced locking: --enhanced-locking-priority-queue: %w", err)
		}
	}
	queues, ok := backend.Backend.(enhanced.QueueBackend)
	if !ok {
		return nil, fmt.Errorf("enhanced locking: --enhanced-locking-priority-queue: the %s backend keeps no durable queues; turn the flag off", s.Config.Backend)
	}
	notifier := queue.NewNotifier(queues, s.LocksController.VCSClient, f.AutoPlan, s.Logger)
	policy := queue.NewPolicy(rules, f.QueueTimeout, notifier)
	// Re-plans enter through the leased command runner, as a webhook's
	// commands do, so they wait for the pull's command lease too, and check
	// under it that their notice is still this replica's.
	worker := queue.NewWorker(queues, notifier, commandPlanner{leases: leases, pulls: s.LocksController.Database}, queue.WorkerOptions{
		AutoPlan: f.AutoPlan,
		Lease:    f.QueueNoticeLease,
		Logger:   s.Logger,
		Events:   s.events,
	})
	s.Logger.Info("enhanced locking: priority queue on (%d priority rule(s), aging step %s, queue timeout %s, auto-plan %v)",
		rules.Len(), rules.AgingStep(), f.QueueTimeout, f.AutoPlan)
	return &lockQueue{backend: queues, policy: policy, worker: worker}, nil
}

// start runs the worker until stop.
func (q *lockQueue) start() {
	ctx, cancel := context.WithCancel(context.Background())
	q.cancel, q.done = cancel, make(chan struct{})
	go func() {
		defer close(q.done)
		q.worker.Run(ctx)
	}()
}

// stop ends the worker and waits for the re-plans it started and for the
// position comments of pulls whose queues moved. A notice
// claimed and not delivered is taken over by another replica, or by this
// one after its restart, when its lease ends.
func (q *lockQueue) stop() {
	if q == nil || q.cancel == nil {
		return
	}
	q.cancel()
	<-q.done
	q.policy.Wait()
}
