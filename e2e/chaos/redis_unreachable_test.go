package chaos

import (
	"testing"
	"time"

	. "github.com/runatlantis/atlantis/testing"
)

// unreachableFor is how long Redis answers nothing.
const unreachableFor = 30 * time.Second

// TestRedisUnreachable: under traffic, with a lock held and a pull queued,
// Redis is SIGSTOPped for 30 s, as a network partition would cut it off:
// connections stay open and nothing answers. Lock requests fail closed
// meanwhile (no plan runs without its lock), and once Redis answers again
// every holder still holds, every queued pull is handed the lock once, and
// no lock was granted twice.
func TestRedisUnreachable(t *testing.T) {
	redisUnreachable(t, "redis-unreachable", worldOptions{}, false)
}

// TestRedisUnreachableBoltDBFallback: as TestRedisUnreachable on the one
// replica the BoltDB fallback is safe for: while Redis is cut off, locks are
// taken in the local database, and once it answers they are reconciled into
// Redis; no lock is granted twice and none is lost across the switch and
// back.
func TestRedisUnreachableBoltDBFallback(t *testing.T) {
	redisUnreachable(t, "redis-unreachable-boltdb-fallback", worldOptions{
		replicas: 1,
		args:     []string{"--locking-db-type=boltdb", "--enhanced-locking-fallback=boltdb"},
	}, true)
}

// redisUnreachable cuts Redis off under traffic. Meanwhile a new pull plans
// probeDir, a free project: without the fallback it must be refused, with it
// planned.
func redisUnreachable(t *testing.T, name string, opts worldOptions, fallback bool) {
	w := newWorld(t, name, opts)
	tr, script := w.startScenario()
	Ok(t, w.redis.Pause())
	paused := time.Now()
	t.Logf("%s: redis-server paused for %s", name, unreachableFor)
	// Health checks run every second: by now the replicas know.
	w.run(3 * time.Second)
	probe := w.newActor(probeDir, 0)
	outcome, _ := probe.plan()
	w.run(unreachableFor - time.Since(paused))
	Ok(t, w.redis.Resume())
	t.Logf("%s: redis-server resumed; the probe #%d got %q", name, probe.pr.Number, probe.answer)
	switch {
	case !fallback && outcome == planned:
		t.Errorf("%s: #%d planned %s while Redis was unreachable: enhanced locking must fail closed", name, probe.pr.Number, probeDir)
	case fallback && outcome != planned:
		// Found by this scenario: the command lease has no fallback, so every
		// command is refused while Redis is away (reported to the lead).
		t.Errorf("%s: #%d did not plan %s while Redis was unreachable, though the BoltDB fallback is on: Atlantis answered %q "+
			"(a \"Command not run\" here means the per-pull command lease, whose store is Redis, refuses every command: "+
			"the fallback covers locks only)", name, probe.pr.Number, probeDir, probe.answer)
	}
	probe.release(opMerge)
	w.endScenario(tr, script)
}
