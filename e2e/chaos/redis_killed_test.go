package chaos

import (
	"testing"
	"time"
)

// TestRedisKilledAOFAlways: Redis is SIGKILLed under traffic, with a lock
// held and a pull queued behind it, and restarted from its append-only file
// synced on every write. Nothing Redis acknowledged is lost: every holder
// keeps its lock, every queued pull is handed the lock once, and no lock is
// granted twice.
func TestRedisKilledAOFAlways(t *testing.T) {
	redisKilledMidQueue(t, "redis-killed-aof-always", "always")
}

// TestRedisKilledAOFEverysec: as TestRedisKilledAOFAlways with the AOF
// synced every second, which may lose the writes of the last second before
// the kill (Redis's persistence docs). The kill comes once no command has
// been in flight for 3 s, and nothing older is lost.
func TestRedisKilledAOFEverysec(t *testing.T) {
	redisKilledMidQueue(t, "redis-killed-aof-everysec", "everysec")
}

func redisKilledMidQueue(t *testing.T, name, fsync string) {
	w := newWorld(t, name, worldOptions{fsync: fsync})
	tr, script := w.startScenario()
	if fsync != "always" {
		w.quiesce(tr, 3*time.Second)
	}
	w.redis.Kill()
	t.Logf("%s: redis-server killed", name)
	time.Sleep(time.Second)
	w.redis.Restart()
	w.gate.reopen()
	w.endScenario(tr, script)
}
