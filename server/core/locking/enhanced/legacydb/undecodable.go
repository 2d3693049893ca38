package legacydb

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"
	tally "github.com/uber-go/tally/v4"
	bolt "go.etcd.io/bbolt"
)

// UndecodableLocks reports the stored lock values a lock list cannot decode
// (a hand edit, another tool's write, a damaged page). The list leaves such a
// lock out rather than fail, so one bad value never hides the other locks
// from the locks page, the stale-lock reaper and deadlock detection; the
// value stays stored, and its key stays taken, until an operator clears it.
//
// Each distinct key and value is reported once however often it is read: a
// log line naming the key and how to clear it, and one count of
// lock_undecodable_total (metrics.LocksUndecodable).
type UndecodableLocks struct {
	logger  logging.SimpleLogging
	counter tally.Counter

	mu   sync.Mutex
	seen map[[sha256.Size]byte]struct{}
}

// maxRemembered bounds the values already reported; past it they are
// forgotten, so a value may be reported again, never missed.
const maxRemembered = 4096

// NewUndecodableLocks reports to logger and counts on scope; either may be
// nil.
func NewUndecodableLocks(logger logging.SimpleLogging, scope tally.Scope) *UndecodableLocks {
	if scope == nil {
		scope = tally.NoopScope
	}
	return &UndecodableLocks{logger: logger, counter: scope.Counter("lock_undecodable_total"), seen: map[[sha256.Size]byte]struct{}{}}
}

// Report logs and counts the lock at key, whose stored value failed to
// decode with err, unless it was reported already. err names the key and
// how to clear it.
func (u *UndecodableLocks) Report(key string, value []byte, err error) {
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
	if u.logger != nil {
		u.logger.Err("a lock is left out of the lock list (locks page, stale-lock reaper, deadlock detection) until its stored value is fixed: %s", err)
	}
}

// locksBucket is upstream's BoltDB bucket of project locks.
const locksBucket = "runLocks"

// readFile reads the locks of the BoltDB file opts.File for Guard when
// upstream's List failed: that List stops at the first value it cannot
// decode and names it by position only. readFile reports and leaves out each
// lock that does not decode and returns the others, so one bad value neither
// stops the server nor hides the other locks; upstream's TryLock still
// refuses its key.
//
// Upstream holds the file with an exclusive lock, so readFile reads a copy,
// which is the file as it is: Guard runs before anything writes to it.
func readFile(opts Options) ([]models.ProjectLock, error) {
	snapshot, err := copyFile(opts.File)
	if err != nil {
		return nil, err
	}
	defer os.Remove(snapshot) // nolint: errcheck
	snap, err := bolt.Open(snapshot, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("opening a copy of %s: %w", opts.File, err)
	}
	defer snap.Close() // nolint: errcheck
	undecodable := NewUndecodableLocks(opts.Logger, opts.Scope)
	var locks []models.ProjectLock
	err = snap.View(func(tx *bolt.Tx) error {
		bucket := tx.Bucket([]byte(locksBucket))
		if bucket == nil {
			return nil
		}
		return bucket.ForEach(func(k, v []byte) error {
			var lock models.ProjectLock
			if err := json.Unmarshal(v, &lock); err != nil {
				undecodable.Report(string(k), v, fmt.Errorf("BoltDB lock %q in %s does not decode (%w): stop Atlantis and delete the key "+
					"from bucket %q, or restore the file from a backup", k, opts.File, err, locksBucket))
				return nil
			}
			locks = append(locks, lock)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("reading a copy of %s: %w", opts.File, err)
	}
	return locks, nil
}

// copyFile copies path beside itself and returns the copy's path.
func copyFile(path string) (string, error) {
	src, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	defer src.Close() // nolint: errcheck
	dst, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".read-*")
	if err != nil {
		return "", fmt.Errorf("copying %s: %w", path, err)
	}
	_, err = io.Copy(dst, src)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst.Name()) // nolint: errcheck
		return "", fmt.Errorf("copying %s: %w", path, err)
	}
	return dst.Name(), nil
}
