package enhanced

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"
)

// pendingChange is a project lock, or with isCommand the command lock,
// taken or released during a fallback.
type pendingChange struct {
	lock      models.ProjectLock
	isCommand bool
	command   command.Name
	lockTime  time.Time
	released  bool
}

// shouldFallBack switches to the legacy database when err says the backend is
// out of reach and fallback is allowed. It reports whether the caller should
// run its operation again, now in fallback mode.
func (a *Adapter) shouldFallBack(err error) bool {
	if !a.opts.FallbackToLegacy || !errors.Is(err, ErrBackendUnavailable) {
		return false
	}
	a.setBackendDown(err)
	return true
}

func (a *Adapter) setBackendDown(cause error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fallback {
		return
	}
	a.fallback = true
	a.metrics.fallback("legacy")
	a.opts.Logger.Warn("enhanced locking: %s is unreachable (%v); locks go to the legacy database until it returns (--enhanced-locking-fallback=boltdb, safe for one replica only)", a.opts.BackendName, cause)
	a.opts.Events.Publish(Event{Type: EventFallbackActivated, Time: time.Now(), Err: cause})
}

// BackendHealthChanged tells the adapter what the health checker saw. Going
// down switches to the legacy database when fallback is allowed; coming back
// replays what happened meanwhile into the backend before it serves again.
func (a *Adapter) BackendHealthChanged(healthy bool) {
	if !a.opts.FallbackToLegacy {
		return
	}
	if !healthy {
		a.setBackendDown(fmt.Errorf("health check failed"))
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.fallback {
		return
	}
	if err := a.reconcile(); err != nil {
		a.opts.Logger.Warn("enhanced locking: %s answers again but the locks taken meanwhile could not be copied back yet: %v; staying on the legacy database", a.opts.BackendName, err)
		return
	}
	a.fallback = false
	a.metrics.fallback(a.opts.BackendName)
	a.opts.Logger.Info("enhanced locking: %s is back; locks taken meanwhile were copied into it", a.opts.BackendName)
	a.opts.Events.Publish(Event{Type: EventFallbackRecovered, Time: time.Now()})
}

// reconcile replays the fallback's lock changes into the backend in the order
// they happened. A lock another pull holds in the backend is reported, never
// overwritten. Called with mu held for writing.
func (a *Adapter) reconcile() error {
	a.pendingMu.Lock()
	defer a.pendingMu.Unlock()
	for len(a.pending) > 0 {
		change := a.pending[0]
		err := a.call(func(ctx context.Context) error {
			switch {
			case change.isCommand && change.released:
				return a.releaseCommandLock(ctx, change.command)
			case change.isCommand:
				return a.copyCommandLock(ctx, change.command, change.lockTime)
			case change.released:
				_, err := a.backend.UnlockIfOwnedByPull(ctx, change.lock.Project, change.lock.Workspace, change.lock.Pull.Num)
				return err
			default:
				return a.copyLock(ctx, change.lock)
			}
		}, 0)
		if err != nil {
			return err
		}
		a.pending = a.pending[1:]
	}
	a.pending = nil
	return nil
}

// remember records a fallback change; run calls the legacy operations that
// do so with pendingMu held.
func (a *Adapter) remember(c pendingChange) {
	a.pending = append(a.pending, c)
}
