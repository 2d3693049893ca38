package enhanced_test

import (
	"strconv"
	"testing"

	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/events"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/events/eventstest"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// describe is what was published, each as "type #pull" (the lock's pull),
// with " held by #pull" for the holder in the way.
func describe(published []events.Event) []string {
	var out []string
	for _, e := range published {
		s := string(e.Type)
		if e.Lock != nil {
			s += " #" + strconv.Itoa(e.Lock.Pull.Num)
		}
		if e.Current != nil {
			s += " held by #" + strconv.Itoa(e.Current.Pull.Num)
		}
		out = append(out, s)
	}
	return out
}

// Every answer to a lock request, every release and every queueing is
// published, in the order it happened, with the locks it is about.
func TestAdapter_PublishesTheLockLifecycle(t *testing.T) {
	srv := redistest.Start(t)
	log := &eventstest.Collector{}
	policy := &planningPolicy{planning: map[int]bool{2: true}}
	adapter := newRedisAdapter(t, fastClient(t, srv), openBolt(t, t.TempDir()), enhanced.AdapterOptions{Queue: policy, Events: log})
	lock := func(pull int) bool {
		t.Helper()
		acquired, _, err := adapter.TryLock(enhancedtest.NewLock("org/repo", "dir", "default", "", pull))
		Ok(t, err)
		return acquired
	}

	Assert(t, lock(1), "pull 1 did not lock a free lock")
	Equals(t, []string{"lock_acquired #1"}, describe(log.Take()))

	Assert(t, !lock(2), "pull 2 was granted a held lock")
	Assert(t, !lock(4), "pull 4 was granted a held lock")
	Equals(t, []string{
		"lock_queued #2 held by #1", "lock_contended #2 held by #1",
		"lock_contended #4 held by #1", // pull 4 does not plan: not queued
	}, describe(log.Take()))

	// The release hands the lock to pull 2 in the backend: a release, and the
	// hand-over is the queue worker's to tell.
	released, err := adapter.UnlockIfOwnedByPull(enhancedtest.NewLock("org/repo", "dir", "default", "", 1).Project, "default", 1)
	Ok(t, err)
	Assert(t, released != nil, "pull 1's lock not released")
	Equals(t, []string{"lock_released #1"}, describe(log.Take()))

	// Releasing nothing publishes nothing.
	_, err = adapter.UnlockIfOwnedByPull(released.Project, "default", 1)
	Ok(t, err)
	Equals(t, []string(nil), describe(log.Take()))

	other := enhancedtest.NewLock("org/repo", "other", "default", "", 2)
	acquired, _, err := adapter.TryLock(other)
	Ok(t, err)
	Assert(t, acquired, "pull 2 did not lock a free lock")
	_, err = adapter.UnlockByPull("org/repo", 2)
	Ok(t, err)
	got := describe(log.Take())
	Equals(t, "lock_acquired #2", got[0])
	Equals(t, []string{"lock_released #2", "lock_released #2"}, got[1:])

	// Fail closed: the request fails, and says so.
	srv.Stop()
	_, _, err = adapter.TryLock(enhancedtest.NewLock("org/repo", "dir", "default", "", 3))
	Assert(t, err != nil, "a request with Redis down should fail")
	failed := log.Take()
	Equals(t, 1, len(failed))
	Equals(t, events.EventLockFailed, failed[0].Type)
	Assert(t, failed[0].Err != nil && failed[0].Duration > 0, "the failure should carry its error and how long it took: %v", failed[0])
}
