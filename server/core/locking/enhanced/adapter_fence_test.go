package enhanced_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

var errLost = errors.New("lease lost")

// fencedPull fences one pull, as the command lease manager does for a pull
// whose command lost its lease on this replica.
type fencedPull int

func (f fencedPull) Check(_ string, pullNum int) error {
	if pullNum == int(f) {
		return fmt.Errorf("pull %d: %w", pullNum, errLost)
	}
	return nil
}

func TestAdapter_FencedPullChangesNothing(t *testing.T) {
	legacy := openBolt(t, t.TempDir())
	a := newRedisAdapter(t, redistest.Start(t).Client(t), legacy, enhanced.AdapterOptions{Fence: fencedPull(7)})
	held := enhancedtest.NewLock("org/repo", "dir", "default", "", 7)
	other := enhancedtest.NewLock("org/repo", "other", "default", "", 8)

	acquired, _, err := a.TryLock(held)
	Assert(t, errors.Is(err, errLost), "TryLock of a fenced pull must fail, got %v", err)
	Assert(t, !acquired, "a fenced pull gets no lock")
	lock, err := a.GetLock(held.Project, held.Workspace)
	Ok(t, err)
	Assert(t, lock == nil, "nothing was locked")

	acquired, _, err = a.TryLock(other)
	Ok(t, err)
	Assert(t, acquired, "other pulls are not fenced")
	_, err = a.UnlockIfOwnedByPull(other.Project, other.Workspace, 7)
	Assert(t, errors.Is(err, errLost), "UnlockIfOwnedByPull for a fenced pull must fail, got %v", err)
	_, err = a.UpdatePullWithResults(held.Pull, []command.ProjectResult{{RepoRelDir: "dir", Workspace: "default"}})
	Assert(t, errors.Is(err, errLost), "UpdatePullWithResults must fail, got %v", err)
	err = a.UpdateProjectStatus(held.Pull, "default", "dir", models.AppliedPlanStatus)
	Assert(t, errors.Is(err, errLost), "UpdateProjectStatus must fail, got %v", err)
	status, err := a.GetPullStatus(held.Pull)
	Ok(t, err)
	Assert(t, status == nil, "no status was written for the fenced pull")
	// A status another replica's command wrote survives the fenced command.
	_, err = legacy.UpdatePullWithResults(held.Pull, []command.ProjectResult{{RepoRelDir: "dir", Workspace: "default"}})
	Ok(t, err)
	err = a.DeletePullStatus(held.Pull)
	Assert(t, errors.Is(err, errLost), "DeletePullStatus must fail, got %v", err)
	status, err = a.GetPullStatus(held.Pull)
	Ok(t, err)
	Assert(t, status != nil, "the fenced pull's status was deleted")

	// Closing a pull always frees its locks, fenced or not.
	_, err = a.UnlockByPull("org/repo", 7)
	Ok(t, err)
}
