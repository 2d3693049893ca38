package backends

import (
	"context"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// Every way a lock ends its holding records when, and the record outlives
// the lock.
func TestReleasesAreRecorded(t *testing.T) {
	ctx := context.Background()
	for name, client := range map[string]func(t *testing.T) *Redis{
		"standalone": func(t *testing.T) *Redis { return newTestRedis(t, redistest.Start(t).Client(t), RedisOptions{}) },
		"cluster":    func(t *testing.T) *Redis { return newTestRedis(t, redistest.StartCluster(t).Client(t), RedisOptions{}) },
	} {
		t.Run(name, func(t *testing.T) {
			r := client(t)
			byUnlock := enhancedtest.NewLock("org/repo", "a", "default", "", 1)
			byPull := enhancedtest.NewLock("org/repo", "b", "default", "", 1)
			handedOver := enhancedtest.NewLock("org/repo", "c", "default", "", 1)
			never := enhancedtest.NewLock("org/repo", "d", "default", "", 9)
			for _, l := range []models.ProjectLock{byUnlock, byPull, handedOver, never} {
				mustTryLock(t, r, l)
			}
			before := time.Now().Add(-time.Second) // Redis's clock, not ours
			_, err := r.Unlock(ctx, byUnlock.Project, byUnlock.Workspace)
			Ok(t, err)
			waiting := queue(t, r, enhancedtest.NewLock("org/repo", "c", "default", "", 2), 0)
			_, err = r.UnlockByPull(ctx, "org/repo", 1)
			Ok(t, err)
			Equals(t, waiting.value, storedValue(t, r, handedOver))

			times, err := r.LastReleased(ctx, []models.ProjectLock{byUnlock, byPull, handedOver, never})
			Ok(t, err)
			for i, name := range []string{"unlock", "unlock by pull", "handover"} {
				Assert(t, times[i].After(before), "%s: release time %s not recorded", name, times[i])
			}
			Assert(t, times[3].IsZero(), "a lock never released has a release time %s", times[3])
		})
	}
}
