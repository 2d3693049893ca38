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
// instant the last successful renewal was *sent* plus four fifths of the
// TTL (validFor), read on the clocks of clock.go at every check. The store measures the
// whole TTL from when it executed that renewal, later, so this process gives
// the lease up a fifth of the TTL before any other replica can be granted
// it, as long as the clocks drift apart by less than that over one TTL.
// Nothing waits for the heartbeat to notice: Err reads the clocks, and a
// timer independent of the renewals fires at validUntil, so a process that
// was paused past it (GC, SIGSTOP, a frozen VM) or whose renewals hang sees
// the loss at its first check, and its running processes are stopped as the
// timer fires.
type Lease struct {
	m     *Manager
	pull  enhanced.PullRef
	token string

	mu         sync.Mutex
	validUntil instant
	lost       bool
	lostCh     chan struct{}
	expiry     *time.Timer

	stop     chan struct{}
	stopped  chan struct{}
	returned chan struct{}
	release  sync.Once
}

func newLease(m *Manager, pull enhanced.PullRef, req enhanced.CommandLeaseRequest, asked instant) *Lease {
	return &Lease{
		m:          m,
		pull:       pull,
		token:      req.Token,
		validUntil: asked.add(validFor(m.opts.TTL)),
		lostCh:     make(chan struct{}),
		stop:       make(chan struct{}),
		stopped:    make(chan struct{}),
		returned:   make(chan struct{}),
	}
}

// start arms the expiry timer and starts renewing.
func (l *Lease) start() {
	l.mu.Lock()
	l.expiry = time.AfterFunc(now().until(l.validUntil), l.expire)
	l.mu.Unlock()
	go l.heartbeat()
}

// Lost is closed once the lease is lost.
func (l *Lease) Lost() <-chan struct{} {
	return l.lostCh
}

// Err is ErrLeaseLost once the lease may be another command's. It reads the
// clocks, so it is right even before the expiry timer has run.
func (l *Lease) Err() error {
	l.mu.Lock()
	lost := l.lost
	expired := !now().before(l.validUntil)
	l.mu.Unlock()
	if expired && !lost {
		l.lose("it could not be renewed before it ran out")
	}
	if lost || expired {
		return ErrLeaseLost
	}
	return nil
}

// expire runs at validUntil, and again later if a renewal moved it.
func (l *Lease) expire() {
	l.mu.Lock()
	left := now().until(l.validUntil)
	if left > 0 && !l.lost {
		l.expiry.Reset(left)
		l.mu.Unlock()
		return
	}
	l.mu.Unlock()
	l.lose("it could not be renewed before it ran out")
}

// heartbeat renews every TTL/3 until Release or the loss, and declares the
// lease lost when the store says another token holds it.
func (l *Lease) heartbeat() {
	defer close(l.stopped)
	ttl := l.m.opts.TTL
	tick := time.NewTicker(max(ttl/3, time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-l.lostCh:
			return
		case <-tick.C:
			sent := now()
			ctx, cancel := context.WithTimeout(context.Background(), ttl/3)
			held, err := l.m.store.RenewCommandLease(ctx, l.pull, l.token, ttl)
			cancel()
			switch {
			case err != nil:
				l.m.opts.Logger.Warn("renewing the command lease of %s (lost in %s unless a renewal succeeds): %s",
					pullName(l.pull), l.left().Round(time.Millisecond), err)
			case !held:
				l.lose("it ran out and the store no longer has it")
				return
			default:
				l.extend(sent.add(validFor(ttl)))
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

// left is how long the lease stays valid unless renewed.
func (l *Lease) left() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return now().until(l.validUntil)
}

// extend moves validUntil on, unless the lease was already judged lost: a
// renewal that was in flight when it ran out never revives it.
func (l *Lease) extend(until instant) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost || !now().before(l.validUntil) {
		return
	}
	if l.validUntil.before(until) {
		l.validUntil = until
	}
}

// lose marks the lease lost once, and tells whoever waits on Lost.
func (l *Lease) lose(why string) {
	l.mu.Lock()
	if l.lost {
		l.mu.Unlock()
		return
	}
	l.lost = true
	l.mu.Unlock()
	l.m.metrics.lost.Inc(1)
	l.m.opts.Logger.Err("the command lease of %s was lost (%s): this replica stops its command for the pull and does nothing more for it; another replica may run the next one",
		pullName(l.pull), why)
	close(l.lostCh)
}

// Release ends the heartbeat and frees the lease when the command returns;
// a lost lease is left to its new holder.
func (l *Lease) Release() {
	l.release.Do(func() {
		l.mu.Lock()
		l.expiry.Stop()
		l.mu.Unlock()
		close(l.stop)
		<-l.stopped
		if l.Err() == nil {
			ctx, cancel := context.WithTimeout(context.Background(), l.m.opts.TTL)
			if err := l.m.store.ReleaseCommandLease(ctx, l.pull, l.token); err != nil {
				l.m.opts.Logger.Warn("releasing the command lease of %s (it lapses by itself within %s): %s", pullName(l.pull), l.m.opts.TTL, err)
			}
			cancel()
		}
		l.m.returned(l)
		close(l.returned)
	})
}
