package backends

import (
	"crypto/sha256"
	"sync"

	"github.com/runatlantis/atlantis/server/logging"
	tally "github.com/uber-go/tally/v4"
)

// undecodableLocks reports the stored lock values List cannot decode (a hand
// edit, another tool's write). List leaves such a lock out rather than fail,
// so one bad value never hides the other locks from the locks page, the
// stale-lock reaper and deadlock detection; the value stays stored, and its
// key stays taken, until an operator clears it.
//
// Each distinct key and value is reported once however often List reads it:
// a log line naming the key and how to clear it, and one count of
// lock_undecodable_total (metrics.LocksUndecodable).
type undecodableLocks struct {
	logger  logging.SimpleLogging
	counter tally.Counter

	mu   sync.Mutex
	seen map[[sha256.Size]byte]struct{}
}

func newUndecodableLocks(logger logging.SimpleLogging, scope tally.Scope) *undecodableLocks {
	return &undecodableLocks{
		logger:  logger,
		counter: scope.Counter("lock_undecodable_total"),
		seen:    map[[sha256.Size]byte]struct{}{},
	}
}

// report logs and counts the lock at key, whose stored value failed to
// decode with err, unless it was reported already. err names the key and
// how to clear it, as corruptLockError does.
func (u *undecodableLocks) report(key string, value []byte, err error) {
	sum := sha256.Sum256(append([]byte(key+"\x00"), value...))
	u.mu.Lock()
	_, seen := u.seen[sum]
	if !seen {
		if len(u.seen) >= maxRemembered {
			clear(u.seen)
		}
		u.seen[sum] = struct{}{}
	}
	u.mu.Unlock()
	if seen {
		return
	}
	u.counter.Inc(1)
	u.logger.Err("a lock is left out of the lock list (locks page, stale-lock reaper, deadlock detection) until its stored value is fixed: %s", err)
}
