// Package legacydb is the one way enhanced locking reaches the lock
// operations of the database upstream's server opened (the legacy database):
// BoltDB, or upstream's Redis database.
package legacydb

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/runatlantis/atlantis/server/core/boltdb"
	"github.com/runatlantis/atlantis/server/core/db"
	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"
	tally "github.com/uber-go/tally/v4"
)

// Guarded is upstream's database with its lock operations safe to call from
// many goroutines at once. Pull-status operations pass straight through.
//
// Upstream's BoltDB List and GetLock decode values after their read
// transaction has ended, from pages a concurrent write may already have
// reused: garbage, or a process panic "JSON decoder out of sync". Any write
// can reuse them, pull status included, and upstream's components write pull
// status to the database directly. So for BoltDB, Guarded never calls those
// two after it opened: it reads the locks once, before anything else uses the
// database, keeps them in memory, and changes that copy with the results of
// the operations that change the file (which decode inside their
// transactions). Every lock operation runs under one mutex, so the copy and
// the file always change together. Enhanced locking routes every lock
// operation of the server through the adapter, which reaches the legacy
// database only through one Guarded, so nothing else writes its locks.
//
// For another database lock operations pass through, serialised the same way.
type Guarded struct {
	db.Database

	mu sync.Mutex
	// locks are the BoltDB file's locks by lock key; nil for a database that
	// is not BoltDB.
	locks map[string]models.ProjectLock
}

// Options configure Guard. The zero value fails Guard on a BoltDB lock value
// that does not decode.
type Options struct {
	// File is the BoltDB database's file (atlantis.db in the data dir), read
	// when upstream's List cannot decode a lock (readFile).
	File   string
	Logger logging.SimpleLogging
	// Scope counts the locks left out (lock_undecodable_total).
	Scope tally.Scope
}

// Guard returns database guarded. It must be called before anything but the
// caller uses database: for BoltDB it reads every lock once.
func Guard(database db.Database, opts Options) (*Guarded, error) {
	g := &Guarded{Database: database}
	if _, ok := database.(*boltdb.BoltDB); !ok {
		return g, nil
	}
	locks, err := database.List()
	if err != nil && opts.File != "" {
		var readErr error
		if locks, readErr = readFile(opts); readErr == nil {
			err = nil
		} else {
			err = errors.Join(err, readErr)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("reading the locks of the BoltDB database: %w", err)
	}
	g.locks = make(map[string]models.ProjectLock, len(locks))
	for _, l := range locks {
		g.locks[models.GenerateLockKey(l.Project, l.Workspace)] = l
	}
	return g, nil
}

func (g *Guarded) cached() bool { return g.locks != nil }

func (g *Guarded) TryLock(lock models.ProjectLock) (bool, models.ProjectLock, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	acquired, current, err := g.Database.TryLock(lock)
	if err == nil && g.cached() {
		// Acquired: the new lock; refused: the holder, read in the transaction.
		g.locks[models.GenerateLockKey(current.Project, current.Workspace)] = current
	}
	return acquired, current, err
}

func (g *Guarded) Unlock(project models.Project, workspace string) (*models.ProjectLock, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	lock, err := g.Database.Unlock(project, workspace)
	if err == nil && g.cached() {
		delete(g.locks, models.GenerateLockKey(project, workspace))
	}
	return lock, err
}

func (g *Guarded) UnlockIfOwnedByPull(project models.Project, workspace string, pullNum int) (*models.ProjectLock, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.unlockIfOwnedByPull(project, workspace, pullNum)
}

func (g *Guarded) unlockIfOwnedByPull(project models.Project, workspace string, pullNum int) (*models.ProjectLock, error) {
	lock, err := g.Database.UnlockIfOwnedByPull(project, workspace, pullNum)
	if err == nil && lock != nil && g.cached() {
		delete(g.locks, models.GenerateLockKey(project, workspace))
	}
	return lock, err
}

// List returns every lock in lock key order.
func (g *Guarded) List() ([]models.ProjectLock, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.list()
}

func (g *Guarded) list() ([]models.ProjectLock, error) {
	if !g.cached() {
		return g.Database.List()
	}
	keys := make([]string, 0, len(g.locks))
	for k := range g.locks {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	locks := make([]models.ProjectLock, len(keys))
	for i, k := range keys {
		locks[i] = g.locks[k]
	}
	return locks, nil
}

func (g *Guarded) GetLock(project models.Project, workspace string) (*models.ProjectLock, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.cached() {
		return g.Database.GetLock(project, workspace)
	}
	lock, ok := g.locks[models.GenerateLockKey(project, workspace)]
	if !ok {
		return nil, nil
	}
	// Local, as upstream's GetLock returns it.
	lock.Time = lock.Time.Local()
	return &lock, nil
}

// UnlockByPull releases the locks pull pullNum holds in repoFullName exactly.
// Upstream's own UnlockByPull matches the repo name as a key prefix and would
// also release that pull number's locks in "org/repo-two" for "org/repo".
func (g *Guarded) UnlockByPull(repoFullName string, pullNum int) ([]models.ProjectLock, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	all, err := g.list()
	if err != nil {
		return nil, err
	}
	var released []models.ProjectLock
	for _, l := range all {
		if l.Project.RepoFullName != repoFullName || l.Pull.Num != pullNum {
			continue
		}
		lock, err := g.unlockIfOwnedByPull(l.Project, l.Workspace, pullNum)
		if err != nil {
			return released, err
		}
		if lock != nil {
			released = append(released, *lock)
		}
	}
	return released, nil
}

func (g *Guarded) LockCommand(cmdName command.Name, lockTime time.Time) (*command.Lock, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.Database.LockCommand(cmdName, lockTime)
}

func (g *Guarded) UnlockCommand(cmdName command.Name) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.Database.UnlockCommand(cmdName)
}

func (g *Guarded) CheckCommandLock(cmdName command.Name) (*command.Lock, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.Database.CheckCommandLock(cmdName)
}
