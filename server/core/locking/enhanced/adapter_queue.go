package enhanced

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/events"
)

// queues returns the backend's durable queues and the policy for them, when
// both exist.
func (a *Adapter) queues() (QueueBackend, QueuePolicy, bool) {
	if a.opts.Queue == nil {
		return nil, nil, false
	}
	q, ok := a.backend.(QueueBackend)
	return q, a.opts.Queue, ok
}

// request builds the backend request for lock, classified by the queue
// policy when there is one.
func (a *Adapter) request(lock models.ProjectLock) LockRequest {
	req := LockRequest{Lock: lock, Priority: PriorityNormal}
	if a.opts.Queue != nil {
		req.Priority, req.Headstart = a.opts.Queue.Classify(lock)
	}
	return req
}

// enqueue puts a request refused because another pull holds the lock in the
// lock's queue, when the policy wants it. The caller still answers "not
// acquired" with the holder, so upstream comments as it always does; the
// queue adds what happens next. A lock that came free meanwhile is taken
// instead. Failing to queue never fails the request: the pull is where
// upstream would leave it, and the error is logged.
func (a *Adapter) enqueue(req LockRequest, holder models.ProjectLock) (bool, models.ProjectLock, error) {
	queues, policy, ok := a.queues()
	if !ok || a.fallback.Load() || !policy.ShouldQueue(req.Lock) {
		return false, holder, nil
	}
	var res EnqueueResult
	err := a.call(func(ctx context.Context) error {
		var err error
		res, err = queues.Enqueue(ctx, QueueRequest{Lock: req.Lock, Priority: req.Priority, Headstart: req.Headstart, Timeout: policy.Timeout()})
		return err
	}, 0)
	if err != nil {
		a.opts.Logger.Warn("could not queue pull %d for lock %q, leaving it locked out as upstream does: %s",
			req.Lock.Pull.Num, models.GenerateLockKey(req.Lock.Project, req.Lock.Workspace), err)
		return false, holder, nil
	}
	if !res.Queued {
		// Freed, or handed to this pull, since the first attempt.
		acquired, current, _, err := a.tryLockOnce(req)
		return acquired, current, err
	}
	a.opts.Events.Publish(events.Event{Type: events.EventLockQueued, Time: time.Now(), Lock: &req.Lock, Current: res.Holder})
	policy.Queued(res)
	return false, *res.Holder, nil
}

// leaveQueues takes the pull out of every queue before its locks are
// released, so that a closed or unlocked pull is never handed a lock, and
// tells the policy which entries left, so the pulls behind them hear that
// they moved up. Only an unreachable backend stops the release (which then
// goes where the mode says); any other failure is logged and the locks are
// released all the same: a closed pull must not keep them, and an entry left
// behind expires.
func (a *Adapter) leaveQueues(repoFullName string, pullNum int) error {
	queues, policy, ok := a.queues()
	if !ok {
		return nil
	}
	var left []QueueEntry
	err := a.call(func(ctx context.Context) error {
		var err error
		left, err = queues.LeaveQueues(ctx, repoFullName, pullNum)
		return err
	}, 0)
	if err == nil && len(left) > 0 {
		policy.Left(left)
	}
	if errors.Is(err, ErrBackendUnavailable) {
		return fmt.Errorf("leaving the lock queues of pull %s#%d: %w", repoFullName, pullNum, err)
	}
	if err != nil {
		a.opts.Logger.Warn("pull %s#%d could not leave its lock queues, releasing its locks anyway (an entry left behind expires): %s", repoFullName, pullNum, err)
	}
	return nil
}

// mirrorHandOvers copies into the legacy database the holder a release just
// handed the lock to, if any: a queued pull is handed the lock inside the
// backend's release, with no adapter call of its own that would mirror it,
// and a rollback must find it holding the lock. Queued after the release's
// own change in the ordered mirror, so the legacy copy ends as the backend.
func (a *Adapter) mirrorHandOvers(released *models.ProjectLock) {
	if released == nil {
		return
	}
	if _, _, ok := a.queues(); !ok {
		return
	}
	var holder *models.ProjectLock
	err := a.call(func(ctx context.Context) error {
		var err error
		holder, err = a.backend.GetLock(ctx, released.Project, released.Workspace)
		return err
	}, 0)
	if err != nil {
		a.opts.Logger.Warn("reading who lock %q was handed to, for the legacy copy (a rollback copies it from Redis when Redis answers): %s",
			models.GenerateLockKey(released.Project, released.Workspace), err)
		return
	}
	if holder != nil {
		a.mirrorLock(*holder)
	}
}
