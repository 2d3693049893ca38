// Package commandlease runs one pull request's commands one at a time across
// every replica: a command first holds its pull's lease in the enhanced
// backend, renewed by heartbeat while it runs and released when it returns.
package commandlease

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/runatlantis/atlantis/server/logging"
	tally "github.com/uber-go/tally/v4"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// Defaults of the --enhanced-locking-command-lease-* flags.
const (
	DefaultTTL         = 30 * time.Second
	DefaultWaitTimeout = 15 * time.Minute
)

// Options configures a Manager.
type Options struct {
	// Replica names this process in the lease, for operators and for the
	// comment a command that waited too long gets.
	Replica string
	// TTL is how long a lease outlives its last renewal; holders renew every
	// TTL/3, waiters ask every Poll and keep their place for TTL.
	TTL time.Duration
	// WaitTimeout bounds how long a command waits for its pull's lease.
	WaitTimeout time.Duration
	// Poll is how often a waiting command asks again; zero means TTL/10,
	// capped at a quarter of a second: how long the next command may sit
	// idle after the one before it ended.
	Poll   time.Duration
	Logger logging.SimpleLogging
	Scope  tally.Scope
}

// ErrLeaseLost says the command's lease ran out before it was renewed:
// another replica may now run a command for the pull, so this one must do
// nothing more for it.
var ErrLeaseLost = errors.New("the pull request's command lease was lost")

// WaitTimeoutError is returned by Acquire when another command kept the
// pull's lease for the whole wait.
type WaitTimeoutError struct {
	Waited time.Duration
	// Holder is the command that kept the lease, when known.
	Holder enhanced.CommandLease
}

func (e *WaitTimeoutError) Error() string {
	if e.Holder.Token == "" {
		return fmt.Sprintf("another command of this pull request kept running for the whole %s wait", e.Waited)
	}
	return fmt.Sprintf("%s of this pull request kept running on %s for the whole %s wait", e.Holder.Command, e.Holder.Replica, e.Waited)
}

// Manager hands out command leases from a store.
//
// Invariant: for each pull, at most one command of this process runs at a
// time, and none runs while one that lost the pull's lease has not returned.
// The store grants one valid lease at a time; a command that was granted the
// lease while one of this process that lost it still runs (its lease ran out
// in the store) waits for that one to return before it starts, holding its
// lease meanwhile, so a command that cannot be stopped at once is never
// overlapped by its successor on this replica, while the store keeps other
// replicas out.
type Manager struct {
	store   enhanced.CommandLeaseStore
	opts    Options
	metrics metrics

	mu sync.Mutex
	// running holds the leases of this process's commands that have not
	// returned, per pull: at most one valid, any number lost.
	running map[enhanced.PullRef][]*Lease
}

// NewManager returns a manager for store.
func NewManager(store enhanced.CommandLeaseStore, opts Options) (*Manager, error) {
	if opts.TTL <= 0 {
		return nil, fmt.Errorf("the command lease TTL must be positive, got %s", opts.TTL)
	}
	if opts.WaitTimeout <= 0 {
		return nil, fmt.Errorf("the command lease wait timeout must be positive, got %s", opts.WaitTimeout)
	}
	if opts.Poll <= 0 {
		opts.Poll = min(opts.TTL/10, 250*time.Millisecond)
	}
	if opts.Logger == nil {
		opts.Logger = enhanced.NopLogger{}
	}
	if opts.Scope == nil {
		opts.Scope = tally.NoopScope
	}
	return &Manager{store: store, opts: opts, metrics: newMetrics(opts.Scope), running: map[enhanced.PullRef][]*Lease{}}, nil
}

// Acquire waits, in arrival order and for at most the wait timeout, until
// the pull's lease is this command's. The caller must Release it.
func (m *Manager) Acquire(ctx context.Context, pull enhanced.PullRef, command string) (*Lease, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, m.opts.WaitTimeout)
	defer cancel()
	req := enhanced.CommandLeaseRequest{
		Pull:      pull,
		Token:     newToken(),
		Replica:   m.opts.Replica,
		Command:   command,
		TTL:       m.opts.TTL,
		WaiterTTL: m.opts.TTL,
	}
	waited := false
	var holder enhanced.CommandLease
	// failingSince is when the store last started failing; zero while it
	// answers.
	var failingSince time.Time
	for {
		asked := now()
		state, err := m.store.TryCommandLease(ctx, req)
		if err == nil {
			failingSince = time.Time{}
		}
		switch {
		case err != nil && ctx.Err() == nil:
			// A blip passes within the wait, and the place in line lapses
			// only after a TTL without asking. A store out of reach for a
			// whole TTL fails the command closed now rather than at the end
			// of a wait of many minutes.
			if failingSince.IsZero() {
				failingSince = time.Now()
			}
			if time.Since(failingSince) >= m.opts.TTL {
				m.leave(pull, req.Token)
				return nil, fmt.Errorf("taking the command lease of %s: the lease store failed for %s: %w", pullName(pull), m.opts.TTL, err)
			}
			m.opts.Logger.Warn("command lease of %s: %s", pullName(pull), err)
		case err == nil && state.Granted:
			l := m.hold(pull, req, asked)
			if err := m.awaitLost(ctx, l); err != nil {
				l.Release()
				return nil, m.timedOut(pull, start, enhanced.CommandLease{Replica: m.opts.Replica, Command: "a command whose lease ran out"}, err)
			}
			if waited {
				m.metrics.waitTime.Record(time.Since(start))
			}
			return l, nil
		case err == nil:
			holder = state.Holder
			if !waited {
				waited = true
				m.metrics.waits.Inc(1)
				m.opts.Logger.Info("%s of %s waits for %s running on %s (%d more waiting before it)",
					command, pullName(pull), holder.Command, holder.Replica, state.Ahead)
			}
		}
		select {
		case <-ctx.Done():
			m.leave(pull, req.Token)
			return nil, m.timedOut(pull, start, holder, ctx.Err())
		case <-time.After(m.opts.Poll):
		}
	}
}

// timedOut counts a command refused after its wait and says why.
func (m *Manager) timedOut(pull enhanced.PullRef, start time.Time, holder enhanced.CommandLease, err error) error {
	if !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("waiting for the command lease of %s: %w", pullName(pull), err)
	}
	m.metrics.refused.Inc(1)
	return &WaitTimeoutError{Waited: time.Since(start).Round(time.Second), Holder: holder}
}

// awaitLost waits until no other command of this process for l's pull is
// still running: any such command lost its lease, since l was granted it.
func (m *Manager) awaitLost(ctx context.Context, l *Lease) error {
	for {
		var other *Lease
		m.mu.Lock()
		for _, r := range m.running[l.pull] {
			if r != l {
				other = r
				break
			}
		}
		m.mu.Unlock()
		if other == nil {
			return l.Err()
		}
		select {
		case <-other.returned:
		case <-l.Lost():
			return l.Err()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// hold registers the granted lease as running and starts it. asked is when
// the granting request was sent: the store's expiry comes after it, so
// counting from it errs safe.
func (m *Manager) hold(pull enhanced.PullRef, req enhanced.CommandLeaseRequest, asked instant) *Lease {
	l := newLease(m, pull, req, asked)
	m.mu.Lock()
	m.running[pull] = append(m.running[pull], l)
	m.mu.Unlock()
	l.start()
	return l
}

// returned forgets a command once it returns.
func (m *Manager) returned(l *Lease) {
	m.mu.Lock()
	defer m.mu.Unlock()
	left := slices.DeleteFunc(m.running[l.pull], func(r *Lease) bool { return r == l })
	if len(left) == 0 {
		delete(m.running, l.pull)
		return
	}
	m.running[l.pull] = left
}

// leave takes a token that gave up out of the wait line.
func (m *Manager) leave(pull enhanced.PullRef, token string) {
	ctx, cancel := context.WithTimeout(context.Background(), m.opts.TTL)
	defer cancel()
	if err := m.store.ReleaseCommandLease(ctx, pull, token); err != nil {
		m.opts.Logger.Warn("leaving the command lease wait of %s (its place lapses within %s): %s", pullName(pull), m.opts.TTL, err)
	}
}

// Check reports ErrLeaseLost while a command of this process for the pull
// holds a lease that ran out or was lost, until that command returns:
// whatever asks must not act for the pull. It reads the clocks at each call
// (Lease.Err), so it never waits for the heartbeat to notice.
func (m *Manager) Check(repoFullName string, pullNum int) error {
	pull := enhanced.PullRef{RepoFullName: repoFullName, Num: pullNum}
	m.mu.Lock()
	running := slices.Clone(m.running[pull])
	m.mu.Unlock()
	for _, l := range running {
		if err := l.Err(); err != nil {
			return fmt.Errorf("%s: %w", pullName(pull), err)
		}
	}
	return nil
}

// Leases lists the leases held now across every replica.
func (m *Manager) Leases(ctx context.Context) ([]enhanced.CommandLease, error) {
	return m.store.CommandLeases(ctx)
}

func newToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand documents it)
	return hex.EncodeToString(b)
}

func pullName(p enhanced.PullRef) string {
	return fmt.Sprintf("%s#%d", p.RepoFullName, p.Num)
}
