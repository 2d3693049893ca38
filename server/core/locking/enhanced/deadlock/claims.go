package deadlock

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Claims make each deadlock one replica's to act on. backends.Redis
// implements it for a fleet (SET NX PX); MemoryClaims for the BoltDB
// backend, whose single replica is the whole fleet.
type Claims interface {
	// ClaimOnce records name for ttl unless an unexpired claim of it is
	// there, and reports whether this call made it: of callers claiming at
	// once, exactly one wins.
	ClaimOnce(ctx context.Context, name string, ttl time.Duration) (bool, error)
}

// MemoryClaims keeps claims in this process.
type MemoryClaims struct {
	now    func() time.Time
	mu     sync.Mutex
	claims map[string]time.Time
}

var _ Claims = (*MemoryClaims)(nil)

// NewMemoryClaims returns an empty claim store on the real clock.
func NewMemoryClaims() *MemoryClaims {
	return newMemoryClaims(time.Now)
}

func newMemoryClaims(now func() time.Time) *MemoryClaims {
	return &MemoryClaims{now: now, claims: map[string]time.Time{}}
}

// ClaimOnce implements Claims. Expired claims are dropped on each call, so
// the map holds only the claims of the last ttl.
func (m *MemoryClaims) ClaimOnce(_ context.Context, name string, ttl time.Duration) (bool, error) {
	if ttl <= 0 {
		return false, fmt.Errorf("claiming %q: the claim's ttl must be positive, got %s", name, ttl)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	for n, expires := range m.claims {
		if !now.Before(expires) {
			delete(m.claims, n)
		}
	}
	if _, held := m.claims[name]; held {
		return false, nil
	}
	m.claims[name] = now.Add(ttl)
	return true, nil
}
