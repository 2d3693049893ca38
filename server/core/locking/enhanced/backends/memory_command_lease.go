package backends

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// MemoryCommandLeases keeps command leases in this process, for the BoltDB
// backend: its lock file can only be open in one replica, so one process is
// the whole fleet. The rules are command_lease_try.lua's, on this process's
// monotonic clock.
type MemoryCommandLeases struct {
	now   func() time.Time
	mu    sync.Mutex
	pulls map[enhanced.PullRef]*memoryPullLease
}

type memoryPullLease struct {
	holder  enhanced.CommandLease
	expires time.Time
	// waiting is in arrival order; live holds each waiter's deadline.
	waiting []string
	live    map[string]time.Time
}

var _ enhanced.CommandLeaseStore = (*MemoryCommandLeases)(nil)

// NewMemoryCommandLeases returns an empty store on the real clock.
func NewMemoryCommandLeases() *MemoryCommandLeases {
	return &MemoryCommandLeases{now: time.Now, pulls: map[enhanced.PullRef]*memoryPullLease{}}
}

// TryCommandLease grants, renews or queues, as CommandLeaseStore says.
func (m *MemoryCommandLeases) TryCommandLease(_ context.Context, req enhanced.CommandLeaseRequest) (enhanced.CommandLeaseState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	p := m.pull(req.Pull, now)
	if p.holder.Token == req.Token {
		p.expires = now.Add(req.TTL)
		return enhanced.CommandLeaseState{Granted: true, Holder: p.holder}, nil
	}
	p.waiting = slices.DeleteFunc(p.waiting, func(w string) bool {
		if w != req.Token && now.After(p.live[w]) {
			delete(p.live, w)
			return true
		}
		return false
	})
	if _, queued := p.live[req.Token]; !queued {
		p.waiting = append(p.waiting, req.Token)
	}
	if p.holder.Token == "" && p.waiting[0] == req.Token {
		p.waiting = p.waiting[1:]
		delete(p.live, req.Token)
		p.holder = enhanced.CommandLease{Pull: req.Pull, Token: req.Token, Replica: req.Replica, Command: req.Command, Since: now}
		p.expires = now.Add(req.TTL)
		return enhanced.CommandLeaseState{Granted: true, Holder: p.holder}, nil
	}
	p.live[req.Token] = now.Add(req.WaiterTTL)
	return enhanced.CommandLeaseState{Holder: p.holder, Ahead: slices.Index(p.waiting, req.Token)}, nil
}

// RenewCommandLease extends the lease while token holds it.
func (m *MemoryCommandLeases) RenewCommandLease(_ context.Context, pull enhanced.PullRef, token string, ttl time.Duration) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	p := m.pull(pull, now)
	if p.holder.Token != token {
		return false, nil
	}
	p.expires = now.Add(ttl)
	return true, nil
}

// ReleaseCommandLease frees the lease if token holds it and drops its wait.
func (m *MemoryCommandLeases) ReleaseCommandLease(_ context.Context, pull enhanced.PullRef, token string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.pull(pull, m.now())
	p.waiting = slices.DeleteFunc(p.waiting, func(w string) bool { return w == token })
	delete(p.live, token)
	if p.holder.Token == token {
		p.holder = enhanced.CommandLease{}
	}
	m.forgetIdle(pull, p)
	return nil
}

// CommandLeases lists the leases held now.
func (m *MemoryCommandLeases) CommandLeases(context.Context) ([]enhanced.CommandLease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	var leases []enhanced.CommandLease
	for ref := range m.pulls {
		if p := m.pull(ref, now); p.holder.Token != "" {
			leases = append(leases, p.holder)
		}
	}
	return leases, nil
}

// pull returns the pull's state with an expired holder dropped. Called with
// mu held.
func (m *MemoryCommandLeases) pull(ref enhanced.PullRef, now time.Time) *memoryPullLease {
	p, ok := m.pulls[ref]
	if !ok {
		p = &memoryPullLease{live: map[string]time.Time{}}
		m.pulls[ref] = p
	}
	if p.holder.Token != "" && !now.Before(p.expires) {
		p.holder = enhanced.CommandLease{}
	}
	return p
}

// forgetIdle drops a pull nobody holds or waits for, so the map does not
// grow with every pull ever seen.
func (m *MemoryCommandLeases) forgetIdle(ref enhanced.PullRef, p *memoryPullLease) {
	if p.holder.Token == "" && len(p.waiting) == 0 {
		delete(m.pulls, ref)
	}
}
