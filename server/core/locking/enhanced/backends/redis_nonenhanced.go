package backends

import (
	"crypto/sha256"
	"sync"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"
	tally "github.com/uber-go/tally/v4"
)

// NonEnhancedWrites is what a backend saw of locks written by replicas without
// enhanced locking (upstream Atlantis, or this binary with enhanced locking
// off) on the same Redis. Such a replica takes a lock with GET then SET, so
// while one runs, two pulls can both be granted a lock: the operator must know
// the window is open.
type NonEnhancedWrites struct {
	// Locks counts distinct such lock values seen since start-up.
	Locks int64 `json:"locks_seen"`
	// LastKey and LastSeen name the latest one; absent until one is seen.
	LastKey  string     `json:"last_key,omitempty"`
	LastSeen *time.Time `json:"last_seen,omitempty"`
}

// maxRemembered bounds the set of values already counted; past it the set is
// cleared, so a value may be counted again, never missed.
const maxRemembered = 4096

// nonEnhancedWrites counts each distinct lock value without an acquisition
// token once, however often List or GetLock read it again.
type nonEnhancedWrites struct {
	logger  logging.SimpleLogging
	counter tally.Counter

	mu    sync.Mutex
	seen  map[[sha256.Size]byte]struct{}
	state NonEnhancedWrites
}

func newNonEnhancedWrites(logger logging.SimpleLogging, scope tally.Scope) *nonEnhancedWrites {
	return &nonEnhancedWrites{
		logger:  logger,
		counter: scope.Counter("non_enhanced_lock_writes_total"),
		seen:    map[[sha256.Size]byte]struct{}{},
	}
}

// observe counts and logs value unless it was seen already, and says whether
// it is new.
func (n *nonEnhancedWrites) observe(key, value string, lock models.ProjectLock) bool {
	sum := sha256.Sum256([]byte(key + "\x00" + value))
	n.mu.Lock()
	if _, ok := n.seen[sum]; ok {
		n.mu.Unlock()
		return false
	}
	if len(n.seen) >= maxRemembered {
		clear(n.seen)
	}
	n.seen[sum] = struct{}{}
	n.state.Locks++
	now := time.Now()
	n.state.LastKey = key
	n.state.LastSeen = &now
	n.mu.Unlock()

	n.counter.Inc(1)
	n.logger.Warn("lock %q (pull #%d) was written by a replica without enhanced locking: while such replicas share "+
		"this Redis, their read-then-write locking can grant a lock twice; finish the rollout or rollback so every "+
		"replica runs with the same --enhanced-locking-enabled", key, lock.Pull.Num)
	return true
}

func (n *nonEnhancedWrites) snapshot() NonEnhancedWrites {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.state
}
