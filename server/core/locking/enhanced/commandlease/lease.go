package commandlease

import (
	"context"
	"sync"
	"time"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// Lease is one command's hold on its pull.
//
// Invariant: the lease counts as valid here only before validUntil, the
// local time at which the last successful renewal was *sent* plus
// validFraction of the TTL. The store measures the whole TTL from when it
// executed that renewal, later, so this process gives the lease up a fifth
// of the TTL before any other replica can be granted it, as long as the two
// clocks drift apart by less than that over one TTL and this process reacts
// (stops its command) within it. A watchdog fires at
// validUntil, and Err checks it too, so a process that was paused past it
// (GC, SIGSTOP, a frozen VM) sees the loss at its first check after waking,
// before any lock operation the adapter fences.
type Lease struct {
	m     *Manager
	pull  enhanced.PullRef
	token string

	mu         sync.Mutex
	validUntil time.Time
	lostCh     chan struct{}
	lost       bool

	stop     chan struct{}
	stopped  chan struct{}
	returned chan struct{}
	release  sync.Once
}

func newLease(m *Manager, pull enhanced.PullRef, req enhanced.CommandLeaseRequest, asked time.Time) *Lease {
	return &Lease{
		m:          m,
		pull:       pull,
		token:      req.Token,
		validUntil: asked.Add(validFor(m.opts.TTL)),
		lostCh:     make(chan struct{}),
		stop:       make(chan struct{}),
		stopped:    make(chan struct{}),
		returned:   make(chan struct{}),
	}
}

// Lost is closed once the lease is lost.
func (l *Lease) Lost() <-chan struct{} {
	return l.lostCh
}

// Err is ErrLeaseLost once the lease may be another command's.
func (l *Lease) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost || !time.Now().Before(l.validUntil) {
		return ErrLeaseLost
	}
	return nil
}

// heartbeat renews every TTL/3 until Release, and declares the lease lost
// when the store says another token holds it or validUntil passes first.
func (l *Lease) heartbeat() {
	defer close(l.stopped)
	ttl := l.m.opts.TTL
	tick := time.NewTicker(max(ttl/3, time.Millisecond))
	defer tick.Stop()
	watchdog := time.NewTimer(time.Until(l.deadline()))
	defer watchdog.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-watchdog.C:
			if time.Now().Before(l.deadline()) {
				watchdog.Reset(time.Until(l.deadline()))
				continue
			}
			l.lose("it could not be renewed before it ran out")
			return
		case <-tick.C:
			sent := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), ttl/3)
			held, err := l.m.store.RenewCommandLease(ctx, l.pull, l.token, ttl)
			cancel()
			switch {
			case err != nil:
				l.m.opts.Logger.Warn("renewing the command lease of %s (lost at %s unless a renewal succeeds): %s",
					pullName(l.pull), l.deadline().Format(time.RFC3339Nano), err)
			case !held:
				l.lose("it ran out and the store no longer has it")
				return
			default:
				l.extend(sent.Add(validFor(ttl)))
			}
		}
	}
}

// validFor is how long after a renewal was sent the lease counts as held
// here: four fifths of the TTL, so two renewals (every TTL/3) may fail before
// the lease is given up.
func validFor(ttl time.Duration) time.Duration {
	return ttl * 4 / 5
}

func (l *Lease) deadline() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.validUntil
}

// extend moves validUntil on, unless the lease was already judged lost: a
// renewal that was in flight when the watchdog fired never revives it.
func (l *Lease) extend(until time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.lost && until.After(l.validUntil) {
		l.validUntil = until
	}
}

func (l *Lease) lose(why string) {
	l.mu.Lock()
	l.lost = true
	l.mu.Unlock()
	l.m.markLost(l.pull, l.returned)
	l.m.opts.Logger.Err("the command lease of %s was lost (%s): this replica stops its command for the pull and does nothing more for it; another replica may run the next one",
		pullName(l.pull), why)
	close(l.lostCh)
}

// Release ends the heartbeat and frees the lease when the command returns;
// a lost lease is left to its new holder.
func (l *Lease) Release() {
	l.release.Do(func() {
		close(l.stop)
		<-l.stopped
		l.mu.Lock()
		lost := l.lost
		l.mu.Unlock()
		if lost {
			close(l.returned)
			l.m.returned(l.pull, l.returned)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), l.m.opts.TTL)
		defer cancel()
		if err := l.m.store.ReleaseCommandLease(ctx, l.pull, l.token); err != nil {
			l.m.opts.Logger.Warn("releasing the command lease of %s (it lapses by itself within %s): %s", pullName(l.pull), l.m.opts.TTL, err)
		}
	})
}
