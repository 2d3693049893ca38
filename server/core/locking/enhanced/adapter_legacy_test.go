package enhanced_test

import (
	"context"
	"testing"
	"time"

	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// TestAdapter_ImportDoesNotResurrectReleasedLocks: two replicas, each with its
// own BoltDB legacy database (upstream's default). A lock taken through
// replica 1 and released through replica 2 is still in replica 1's file;
// replica 1's next start must not import it back, and drops its stale copy.
// A lock taken while enhanced locking was off is imported as before.
func TestAdapter_ImportDoesNotResurrectReleasedLocks(t *testing.T) {
	ctx := context.Background()
	client := redistest.Start(t).Client(t)
	dir1 := t.TempDir()
	legacy1 := openBolt(t, dir1)
	replica1 := newRedisAdapter(t, client, legacy1, enhanced.AdapterOptions{})
	replica2 := newRedisAdapter(t, client, openBolt(t, t.TempDir()), enhanced.AdapterOptions{})

	merged := enhancedtest.NewLock("org/repo", "merged", "default", "", 1)
	acquired, _, err := replica1.TryLock(merged)
	Ok(t, err)
	Assert(t, acquired, "lock not acquired")
	replica1.Flush()
	released, err := replica2.UnlockByPull("org/repo", 1) // the pull merged, on replica 2
	Ok(t, err)
	Equals(t, 1, len(released))
	copyLeft, err := legacy1.GetLock(merged.Project, merged.Workspace)
	Ok(t, err)
	Assert(t, copyLeft != nil, "replica 1's file lost its copy; the test proves nothing")

	// Replica 1 restarts after a spell with enhanced locking off, during
	// which upstream took a lock in its file.
	Ok(t, replica1.Close())
	time.Sleep(2 * time.Millisecond)
	whileOff := enhancedtest.NewLock("org/repo", "while-off", "default", "", 2)
	acquired, _, err = legacy1.TryLock(whileOff)
	Ok(t, err)
	Assert(t, acquired, "lock not acquired while disabled")
	restarted := newRedisAdapter(t, client, legacy1, enhanced.AdapterOptions{})
	n, err := restarted.ImportLegacyLocks(ctx)
	Ok(t, err)
	Equals(t, 1, n)

	locks, err := restarted.List()
	Ok(t, err)
	Equals(t, 1, len(locks))
	Equals(t, "while-off", locks[0].Project.Path)
	stale, err := legacy1.GetLock(merged.Project, merged.Workspace)
	Ok(t, err)
	Assert(t, stale == nil, "the stale copy stays in replica 1's file, for a rollback to bring back")
}
