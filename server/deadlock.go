package server

import (
	"context"
	"fmt"
	"time"

	"github.com/runatlantis/atlantis/server/core/locking"
	"github.com/runatlantis/atlantis/server/events"
	"github.com/runatlantis/atlantis/server/events/models"
	tally "github.com/uber-go/tally/v4"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/commandlease"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/deadlock"
)

// deadlockResolveSlack is how much longer than a command may wait for its
// pull's lease a victim's release may take: the claim of a deadlock being
// resolved outlasts the wait for the victim's running command.
const deadlockResolveSlack = 5 * time.Minute

// deadlockDetection is the deadlock detector's running parts.
type deadlockDetection struct {
	detector *deadlock.Detector
	cancel   context.CancelFunc
	done     chan struct{}
}

// newDeadlockDetection builds the detector for
// --enhanced-locking-deadlock-detection on the queue's backend, and makes the
// queue policy trigger a check whenever a pull queues. Deadlocks are claimed
// in Redis with the Redis backend, in this process with BoltDB (one replica).
// Call it once the adapter exists and before the server serves.
func (s *Server) newDeadlockDetection(backend *lockBackend, scope tally.Scope, leases *commandlease.Manager) (*deadlockDetection, error) {
	f := s.Config.Features
	if !f.DeadlockDetection || s.queue == nil {
		return nil, nil
	}
	claims, shared := backend.Backend.(deadlock.Claims)
	if !shared {
		claims = deadlock.NewMemoryClaims()
	}
	var releaser deadlock.Releaser
	if f.DeadlockResolution == DeadlockResolutionReleaseVictim {
		r, err := s.newVictimReleaser()
		if err != nil {
			return nil, err
		}
		releaser = r
	}
	detector, err := deadlock.NewDetector(s.queue.backend, claims, s.LocksController.VCSClient, deadlock.Options{
		Resolution: deadlock.Resolution(f.DeadlockResolution),
		Interval:   f.DeadlockCheckInterval,
		// A deadlock lasts until its entries expire at the latest, unless
		// its pulls queue again: told once per queue timeout is enough.
		NotifyAgainAfter: f.QueueTimeout,
		ResolveTimeout:   f.CommandWaitTimeout + deadlockResolveSlack,
		Guard:            leaseGuard{leases},
		Releaser:         releaser,
		Logger:           s.Logger,
		Scope:            scope,
		Events:           s.events,
	})
	if err != nil {
		return nil, fmt.Errorf("enhanced locking: --enhanced-locking-deadlock-resolution: %w", err)
	}
	s.queue.policy.OnQueued(detector.Trigger)
	s.Logger.Info("enhanced locking: deadlock detection on (resolution %s, checked every %s and whenever a pull queues)",
		f.DeadlockResolution, f.DeadlockCheckInterval)
	return &deadlockDetection{detector: detector}, nil
}

// start runs the detector until stop.
func (d *deadlockDetection) start() {
	if d == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel, d.done = cancel, make(chan struct{})
	go func() {
		defer close(d.done)
		d.detector.Run(ctx)
	}()
}

// stop ends the detector and waits for its check. A victim half freed is
// freed by the next check of a replica, once the claim's TTL has passed.
func (d *deadlockDetection) stop() {
	if d == nil || d.cancel == nil {
		return
	}
	d.cancel()
	<-d.done
}

// leaseGuard holds a victim's command lease while it is freed, so its locks
// never go under a command of its own running on any replica.
type leaseGuard struct {
	leases *commandlease.Manager
}

func (g leaseGuard) Hold(ctx context.Context, pull enhanced.PullRef) (func(), error) {
	lease, err := g.leases.Acquire(ctx, pull, "deadlock resolution")
	if err != nil {
		return nil, err
	}
	return lease.Release, nil
}

// victimReleaser frees a victim as `atlantis unlock` and the locks page do:
// it leaves its queues as UnlockByPull makes a pull leave them (the pulls
// behind it are told their new places), and each lock goes through
// upstream's DeleteLock (the adapter's release, which hands the lock to the
// next in its queue with a notice, then the plan discarded from the working
// dir and the plan store) with the project's status set to discarded.
type victimReleaser struct {
	queues  enhanced.QueueBackend
	policy  enhanced.QueuePolicy
	adapter *enhanced.Adapter
	// deleteLock is upstream's, whose Locker is replaced for each lock.
	deleteLock events.DefaultDeleteLockCommand
	server     *Server
}

func (s *Server) newVictimReleaser() (*victimReleaser, error) {
	deleteLock, ok := s.LocksController.DeleteLockCommand.(*events.DefaultDeleteLockCommand)
	if !ok {
		return nil, fmt.Errorf("enhanced locking: upstream's delete lock command is a %T, not *events.DefaultDeleteLockCommand: "+
			"this upstream version cannot free deadlock victims; use --enhanced-locking-deadlock-resolution=notify", s.LocksController.DeleteLockCommand)
	}
	return &victimReleaser{queues: s.queue.backend, policy: s.queue.policy, adapter: s.Adapter, deleteLock: *deleteLock, server: s}, nil
}

func (r *victimReleaser) LeaveQueues(ctx context.Context, pull enhanced.PullRef) ([]enhanced.QueueEntry, error) {
	left, err := r.queues.LeaveQueues(ctx, pull.RepoFullName, pull.Num)
	if len(left) > 0 {
		r.policy.Left(left)
	}
	return left, err
}

func (r *victimReleaser) Release(_ context.Context, lock models.ProjectLock) (bool, error) {
	cmd := r.deleteLock
	cmd.Locker = ownedUnlock{Locker: cmd.Locker, adapter: r.adapter, lock: lock}
	freed, err := cmd.DeleteLock(r.server.Logger, models.GenerateLockKey(lock.Project, lock.Workspace))
	if err != nil {
		return freed != nil, fmt.Errorf("freeing lock %q of pull %d: %w", models.GenerateLockKey(lock.Project, lock.Workspace), lock.Pull.Num, err)
	}
	if freed == nil {
		return false, nil
	}
	if err := r.adapter.UpdateProjectStatus(freed.Pull, freed.Workspace, freed.Project.Path, models.DiscardedPlanStatus); err != nil {
		r.server.Logger.Warn("enhanced locking: marking the plan of %q of pull %d discarded: %s", models.GenerateLockKey(lock.Project, lock.Workspace), lock.Pull.Num, err)
	}
	return true, nil
}

// ownedUnlock is upstream's Locker with Unlock freeing one known lock only
// while its pull holds it: between the check that a deadlock stands and the
// release, the victim may have let the lock go and another pull taken it.
type ownedUnlock struct {
	locking.Locker
	adapter *enhanced.Adapter
	lock    models.ProjectLock
}

func (o ownedUnlock) Unlock(string) (*models.ProjectLock, error) {
	return o.adapter.UnlockIfOwnedByPull(o.lock.Project, o.lock.Workspace, o.lock.Pull.Num)
}
