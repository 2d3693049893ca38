package enhanced

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/events"
)

// run performs one lock operation entirely in the active mode: enhanced (the
// backend call and its legacy copy) or fallback (the legacy database), and
// says whether the backend served it. The read lock keeps the mode from
// changing halfway, which would let a legacy copy land after the fallback
// took over. An operation that finds the backend out of reach reports it at
// once, and runs again in fallback when fallback is allowed.
func (a *Adapter) run(enhanced func() error, fallback func() error) (bool, error) {
	for {
		a.mu.RLock()
		if a.fallback.Load() {
			// One fallback operation at a time: each reads the legacy state,
			// journals what it will change, then changes it.
			a.fallbackMu.Lock()
			err := fallback()
			a.fallbackMu.Unlock()
			a.mu.RUnlock()
			return false, err
		}
		err := enhanced()
		a.mu.RUnlock()
		if !errors.Is(err, ErrBackendUnavailable) {
			return true, err
		}
		a.backendUnavailable(err)
		if !a.opts.FallbackToLegacy {
			return true, err
		}
	}
}

// call runs op against the backend with a deadline of the operation timeout
// plus wait, retrying while the backend is unreachable if the policy says so.
func (a *Adapter) call(op func(context.Context) error, wait time.Duration) error {
	return a.opts.Retry.do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), a.opts.OperationTimeout+wait)
		defer cancel()
		return op(ctx)
	})
}

// backendUnavailable falls back when that is allowed and tells the health
// report at once that an operation found the backend out of reach. The switch
// comes first, so it is logged with the operation's own error rather than the
// health report's. No mode lock may be held: switching takes it.
func (a *Adapter) backendUnavailable(cause error) {
	a.setBackendDown(cause)
	a.opts.BackendUnavailable(cause)
}

func (a *Adapter) setBackendDown(cause error) {
	if !a.opts.FallbackToLegacy || a.fallback.Load() {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fallback.Load() {
		return
	}
	// The fallback serves from the legacy database: it must hold every
	// change the backend made first.
	a.mirror.flush()
	a.fallback.Store(true)
	a.opts.Logger.Warn("enhanced locking: %s is unreachable (%v); locks go to the legacy database until it returns (--enhanced-locking-fallback=boltdb, safe for one replica only)", a.opts.BackendName, cause)
	a.opts.Events.Publish(events.Event{Type: events.EventFallbackActivated, Time: time.Now(), Backend: fallbackBackend, Err: cause})
}

// BackendHealthChanged tells the adapter what the health checker saw. Going
// down switches to the legacy database when fallback is allowed; coming back
// replays what the fallback changed into the backend before it serves again.
// A report that changes nothing takes no lock, so the periodic report never
// holds up lock operations, waits or probes.
func (a *Adapter) BackendHealthChanged(healthy bool) {
	if !a.opts.FallbackToLegacy {
		return
	}
	if !healthy {
		a.setBackendDown(fmt.Errorf("health check failed"))
		return
	}
	if !a.fallback.Load() {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.fallback.Load() {
		return
	}
	if err := a.replay(); err != nil {
		a.opts.Logger.Warn("enhanced locking: %s answers again but the locks changed meanwhile could not be copied back yet: %v; staying on the legacy database", a.opts.BackendName, err)
		return
	}
	a.fallback.Store(false)
	a.opts.Logger.Info("enhanced locking: %s is back; locks changed meanwhile were copied into it", a.opts.BackendName)
	a.opts.Events.Publish(events.Event{Type: events.EventFallbackRecovered, Time: time.Now(), Backend: a.opts.BackendName})
}

// ReplayFallbackJournal replays what a fallback before the last stop changed
// and had not replayed, as recovering from it would have. A server calls it at
// start, before serving; it does nothing when the journal is empty.
func (a *Adapter) ReplayFallbackJournal() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.journal.empty() {
		return nil
	}
	if err := a.replay(); err != nil {
		return err
	}
	a.opts.Logger.Info("enhanced locking: the locks a fallback changed before the last stop were copied into %s", a.opts.BackendName)
	return nil
}
