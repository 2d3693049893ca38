package enhanced_test

import (
	"sync"
	"testing"

	"github.com/runatlantis/atlantis/server/core/db"
	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// gatedDB is a legacy database whose lock writes wait until the gate opens,
// as a BoltDB fsync on a slow disk does.
type gatedDB struct {
	db.Database
	mu     sync.Mutex
	open   chan struct{}
	writes int
}

func newGatedDB(database db.Database) *gatedDB {
	return &gatedDB{Database: database, open: make(chan struct{})}
}

func (g *gatedDB) pass() {
	<-g.open
	g.mu.Lock()
	g.writes++
	g.mu.Unlock()
}

func (g *gatedDB) TryLock(l models.ProjectLock) (bool, models.ProjectLock, error) {
	g.pass()
	return g.Database.TryLock(l)
}

func (g *gatedDB) Unlock(p models.Project, ws string) (*models.ProjectLock, error) {
	g.pass()
	return g.Database.Unlock(p, ws)
}

func (g *gatedDB) UnlockIfOwnedByPull(p models.Project, ws string, pull int) (*models.ProjectLock, error) {
	g.pass()
	return g.Database.UnlockIfOwnedByPull(p, ws, pull)
}

// TestAdapter_LockOperationsDoNotWaitForTheLegacyCopy: with the legacy
// database stalled, locks are taken and released at once; the copies land
// later, in the order the changes were made, and Flush waits for them.
func TestAdapter_LockOperationsDoNotWaitForTheLegacyCopy(t *testing.T) {
	client := redistest.Start(t).Client(t)
	bolt := openBolt(t, t.TempDir())
	gated := newGatedDB(bolt)
	adapter := newAdapter(t, guard(t, gated), openRedis(t, client), enhanced.AdapterOptions{BackendName: "redis", SeparateLegacyLocks: true})

	first := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	second := enhancedtest.NewLock("org/repo", "dir", "default", "", 2)
	for _, l := range []models.ProjectLock{first, second} {
		acquired, _, err := adapter.TryLock(l)
		Ok(t, err)
		Assert(t, acquired, "lock not acquired while the legacy database stalls")
		_, err = adapter.Unlock(l.Project, l.Workspace)
		Ok(t, err)
	}
	acquired, _, err := adapter.TryLock(second)
	Ok(t, err)
	Assert(t, acquired, "lock not acquired while the legacy database stalls")

	close(gated.open)
	adapter.Flush()
	got, err := bolt.GetLock(second.Project, second.Workspace)
	Ok(t, err)
	Assert(t, got != nil && got.Pull.Num == 2, "the legacy copy is not the backend's last state: %+v", got)
	gated.mu.Lock()
	Equals(t, 5, gated.writes) // every change, none skipped
	gated.mu.Unlock()
}

// TestAdapter_FallbackStartsFromTheBackendsLastState: the switch to the
// fallback waits for the copies on their way, so the legacy database serves
// from the state the backend was in.
func TestAdapter_FallbackStartsFromTheBackendsLastState(t *testing.T) {
	srv := redistest.Start(t)
	client := fastClient(t, srv)
	bolt := openBolt(t, t.TempDir())
	gated := newGatedDB(bolt)
	adapter := newAdapter(t, guard(t, gated), openRedis(t, client), enhanced.AdapterOptions{BackendName: "redis", SeparateLegacyLocks: true, FallbackToLegacy: true})
	held := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	acquired, _, err := adapter.TryLock(held)
	Ok(t, err)
	Assert(t, acquired, "lock not acquired")

	switched := make(chan struct{})
	go func() {
		adapter.BackendHealthChanged(false)
		close(switched)
	}()
	close(gated.open)
	<-switched
	srv.Stop()
	acquired, current, err := adapter.TryLock(enhancedtest.NewLock("org/repo", "dir", "default", "", 2))
	Ok(t, err)
	Assert(t, !acquired, "the fallback granted a lock the backend gave pull #1")
	Equals(t, 1, current.Pull.Num)
}
