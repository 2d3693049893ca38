package enhanced

import (
	"sync"

	"github.com/runatlantis/atlantis/server/events/models"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/legacydb"
)

// maxMirrorBacklog bounds the changes waiting to be copied; a lock operation
// that finds the backlog full waits for room, so memory stays bounded when
// the legacy database is slower than the backend for a long time.
const maxMirrorBacklog = 10000

// mirrorChange is one lock change to copy into the legacy database. It
// returns the lock it is about, if any, for the report of a failure.
type mirrorChange func(legacy *legacydb.Guarded) (*models.ProjectLock, error)

// legacyMirror copies the backend's lock changes into the legacy database in
// the background, so that no lock operation waits on a BoltDB fsync, while a
// rollback (--enhanced-locking-enabled=false) still finds the locks there.
//
// Changes are copied one at a time in the order they were made, so the
// legacy database goes through the states the backend went through, behind
// it by the backlog. Flush waits until it has caught up; the adapter flushes
// before a fallback serves from the legacy database and when it closes, so
// what a crash can lose is only the backlog of its last moments.
type legacyMirror struct {
	legacy *legacydb.Guarded
	failed func(*models.ProjectLock, error)

	mu sync.Mutex
	// changed wakes the copier; caughtUp wakes Flush and enqueuers waiting
	// for room.
	changed  *sync.Cond
	caughtUp *sync.Cond
	backlog  []mirrorChange
	copying  bool
	closed   bool
	stopped  chan struct{}
}

func newLegacyMirror(legacy *legacydb.Guarded, failed func(*models.ProjectLock, error)) *legacyMirror {
	m := &legacyMirror{legacy: legacy, failed: failed, stopped: make(chan struct{})}
	m.changed = sync.NewCond(&m.mu)
	m.caughtUp = sync.NewCond(&m.mu)
	go m.copy()
	return m
}

// enqueue adds a change behind the others. After close, the change is made
// at once: nothing is dropped.
func (m *legacyMirror) enqueue(c mirrorChange) {
	m.mu.Lock()
	for len(m.backlog) >= maxMirrorBacklog && !m.closed {
		m.caughtUp.Wait()
	}
	if m.closed {
		m.mu.Unlock()
		m.apply(c)
		return
	}
	m.backlog = append(m.backlog, c)
	m.changed.Signal()
	m.mu.Unlock()
}

func (m *legacyMirror) copy() {
	defer close(m.stopped)
	m.mu.Lock()
	for {
		for len(m.backlog) == 0 && !m.closed {
			m.changed.Wait()
		}
		if len(m.backlog) == 0 {
			m.mu.Unlock()
			return
		}
		batch := m.backlog
		m.backlog = nil
		m.copying = true
		m.mu.Unlock()
		for _, c := range batch {
			m.apply(c)
		}
		m.mu.Lock()
		m.copying = false
		m.caughtUp.Broadcast()
	}
}

func (m *legacyMirror) apply(c mirrorChange) {
	if lock, err := c(m.legacy); err != nil {
		m.failed(lock, err)
	}
}

// flush returns once every change enqueued before it is in the legacy
// database.
func (m *legacyMirror) flush() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for len(m.backlog) > 0 || m.copying {
		m.caughtUp.Wait()
	}
}

// close copies what is left and stops the copier.
func (m *legacyMirror) close() {
	m.mu.Lock()
	m.closed = true
	m.changed.Signal()
	m.caughtUp.Broadcast()
	m.mu.Unlock()
	<-m.stopped
}
