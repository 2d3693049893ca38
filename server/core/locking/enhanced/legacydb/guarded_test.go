package legacydb_test

import (
	"testing"

	"github.com/runatlantis/atlantis/server/core/boltdb"
	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/legacydb"
)

// The guard's copy of a BoltDB file's locks changes exactly as the file does:
// reopening the file finds what the guard reports.
func TestGuardedBoltDBAgreesWithTheFile(t *testing.T) {
	dir := t.TempDir()
	db, err := boltdb.New(dir)
	Ok(t, err)
	before := enhancedtest.NewLock("org/repo", "before", "default", "", 1)
	_, _, err = db.TryLock(before)
	Ok(t, err)
	g, err := legacydb.Guard(db, legacydb.Options{})
	Ok(t, err)

	kept := enhancedtest.NewLock("org/repo", "kept", "default", "", 2)
	other := enhancedtest.NewLock("org/repo-two", "same-pull-number", "default", "", 2)
	gone := enhancedtest.NewLock("org/repo", "gone", "default", "", 3)
	for _, l := range []models.ProjectLock{kept, other, gone} {
		acquired, _, err := g.TryLock(l)
		Ok(t, err)
		Assert(t, acquired, "lock not acquired")
	}
	refused, current, err := g.TryLock(enhancedtest.NewLock("org/repo", "kept", "default", "", 9))
	Ok(t, err)
	Assert(t, !refused, "took a held lock")
	Equals(t, 2, current.Pull.Num)
	_, err = g.Unlock(gone.Project, gone.Workspace)
	Ok(t, err)
	released, err := g.UnlockIfOwnedByPull(before.Project, before.Workspace, 7)
	Ok(t, err)
	Assert(t, released == nil, "released a lock another pull holds")
	// Exactly org/repo: upstream's own would also release org/repo-two's.
	byPull, err := g.UnlockByPull("org/repo", 2)
	Ok(t, err)
	enhancedtest.EqualLockSets(t, []models.ProjectLock{kept}, byPull)

	want := []models.ProjectLock{before, other}
	listed, err := g.List()
	Ok(t, err)
	enhancedtest.EqualLockSets(t, want, listed)
	got, err := g.GetLock(other.Project, other.Workspace)
	Ok(t, err)
	enhancedtest.EqualLocks(t, other, *got)
	got, err = g.GetLock(kept.Project, kept.Workspace)
	Ok(t, err)
	Assert(t, got == nil, "released lock still read")

	Ok(t, db.Close())
	reopened, err := boltdb.New(dir)
	Ok(t, err)
	defer reopened.Close() // nolint: errcheck
	inFile, err := reopened.List()
	Ok(t, err)
	enhancedtest.EqualLockSets(t, want, inFile)
}
