package backends

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// errClosed ends waits when the backend closes.
var errClosed = errors.New("lock backend closed")

// leaveTimeout bounds leaving a queue after the caller's context is done.
const leaveTimeout = 5 * time.Second

// TryLockWithTimeout is TryLock that, when another pull holds the lock,
// queues for it: by priority, then arrival.
//
// A release hands the lock to the best live waiter inside the releasing
// script and publishes the waiter's token on the lock's channel; the lock is
// never free in between, so no TryLock can take it from the queue. A waiter
// subscribes before it registers, so it cannot miss that message, and checks
// again each time its subscription is back after a reconnect, which catches
// a message published in the gap. It heartbeats its liveness every
// WaiterTTL/3 with the same script that registers it. A waiter
// that stops heartbeating (its replica crashed) is skipped and dropped by the
// next release.
func (r *Redis) TryLockWithTimeout(ctx context.Context, req enhanced.LockRequest, timeout time.Duration) (bool, models.ProjectLock, error) {
	acquired, curr, err := r.TryLock(ctx, req)
	if err != nil || acquired || timeout <= 0 {
		return acquired, curr, err
	}
	w, err := r.newWaiter(req)
	if err != nil {
		return false, curr, err
	}
	done, ok := r.track()
	if !ok {
		return false, curr, errClosed
	}
	defer done()
	return w.wait(ctx, timeout, curr)
}

// waiter is one TryLockWithTimeout call queued for a lock. value is the lock
// it installs when the lock is handed to it: its token makes it unique, so the
// lock is this waiter's exactly while the stored value is value.
type waiter struct {
	r     *Redis
	keys  lockKeys
	lock  models.ProjectLock
	token string
	value string
	args  []any
}

func (r *Redis) newWaiter(req enhanced.LockRequest) (*waiter, error) {
	token := newToken()
	value, err := encodeLock(req.Lock, token)
	if err != nil {
		return nil, err
	}
	w := &waiter{
		r:     r,
		keys:  r.keys.forProject(req.Lock.Project, req.Lock.Workspace),
		lock:  req.Lock,
		token: token,
		value: value,
	}
	w.args = []any{w.token, w.value, baseRepo(req.Lock), req.Lock.Pull.Num,
		req.Headstart.Microseconds(), r.waiterTTL.Milliseconds(), w.keys.channel}
	return w, nil
}

func (w *waiter) wait(ctx context.Context, timeout time.Duration, curr models.ProjectLock) (bool, models.ProjectLock, error) {
	sub := w.r.client.Subscribe(ctx, w.keys.channel)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		return false, curr, redisError(fmt.Sprintf("subscribing to %q", w.keys.channel), err)
	}
	// The first confirmation was read above: the next ones are resubscriptions.
	notes := wakeups(ctx, sub)

	held, curr, err := w.check(ctx, curr)
	if err != nil {
		w.leave(context.WithoutCancel(ctx), false, curr)
		return false, curr, err
	}
	if held {
		return true, curr, nil
	}

	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	heartbeat := time.NewTicker(max(w.r.waiterTTL/3, time.Millisecond))
	defer heartbeat.Stop()
	for {
		select {
		case <-notes:
			// Checked whoever the hand-over names: the lock handed to
			// this waiter's own pull (its durable queue entry) is this
			// waiter's too, and the check adopts it.
		case <-heartbeat.C:
		case <-deadline.C:
			return w.leave(ctx, true, curr)
		case <-ctx.Done():
			_, curr, _ := w.leave(context.WithoutCancel(ctx), false, curr)
			return false, curr, ctx.Err()
		case <-w.r.closed:
			_, curr, _ := w.leave(context.WithoutCancel(ctx), false, curr)
			return false, curr, errClosed
		}
		held, next, err := w.check(ctx, curr)
		switch {
		case errors.Is(err, enhanced.ErrCorruptLock):
			w.leave(context.WithoutCancel(ctx), false, curr)
			return false, curr, err
		case err != nil:
			// Redis may come back before the deadline; if it does not, the
			// waiter's liveness lapses and releases skip it.
			w.r.logger.Warn("waiting for lock %q: %s", w.keys.lock, err)
		case held:
			return true, next, nil
		default:
			curr = next
		}
	}
}

// check registers the waiter or refreshes its liveness, and says whether the
// lock is now the waiter's.
func (w *waiter) check(ctx context.Context, curr models.ProjectLock) (bool, models.ProjectLock, error) {
	reply, err := w.r.runIndexed(ctx, waitScript, w.keys, w.lock, w.args...)
	if err != nil {
		if reply.status == statusYes {
			// Held but not indexed: pass it on rather than hold it unseen.
			w.leave(context.WithoutCancel(ctx), false, curr)
		}
		return false, curr, redisError(fmt.Sprintf("waiting for lock %q", w.keys.lock), err)
	}
	if reply.status == statusCorrupt {
		return false, curr, corruptLockError(w.keys.lock, errUndecodable)
	}
	if !reply.found {
		return reply.status == statusYes, curr, nil
	}
	lock, err := w.r.decodeLock(w.keys.lock, reply.value)
	if err != nil {
		return false, curr, err
	}
	return reply.status == statusYes, lock, nil
}

// leave removes the waiter from the queue. If the lock was handed to it after
// it stopped listening, it keeps the lock (keep) and reports it held, or
// passes it to the next waiter: a handed lock is never dropped.
func (w *waiter) leave(ctx context.Context, keep bool, curr models.ProjectLock) (bool, models.ProjectLock, error) {
	ctx, cancel := context.WithTimeout(ctx, leaveTimeout)
	defer cancel()
	cmd := runAll(ctx, w.r.client, []scriptCall{leaveCall(w.keys, w.token, w.value, keep)})[0]
	reply, err := parseReply(cmd)
	if err != nil {
		// The entry's liveness lapses within WaiterTTL and releases skip it; a
		// lock handed to it meanwhile is given back once Redis answers, so the
		// pull never holds it unknowingly.
		w.r.abandon(w.keys, w.token, w.value)
		return false, curr, redisError(fmt.Sprintf("leaving queue of lock %q", w.keys.lock), err)
	}
	if !reply.found {
		return false, curr, nil
	}
	lock, err := w.r.decodeLock(w.keys.lock, reply.value)
	if err != nil {
		return false, curr, err
	}
	return reply.status == statusYes, lock, nil
}
