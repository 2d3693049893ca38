package backends

import (
	"testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

func TestCommandLeaseConformanceRedis(t *testing.T) {
	client := redistest.Start(t).Client(t)
	for _, prefix := range []string{"", "team1:"} {
		t.Run("prefix="+prefix, func(t *testing.T) {
			enhancedtest.RunCommandLeaseConformance(t, func(t *testing.T) enhanced.CommandLeaseStore {
				return newTestRedis(t, client, RedisOptions{KeyPrefix: prefix})
			})
		})
	}
}

func TestCommandLeaseConformanceRedisCluster(t *testing.T) {
	client := redistest.StartCluster(t).Client(t)
	enhancedtest.RunCommandLeaseConformance(t, func(t *testing.T) enhanced.CommandLeaseStore {
		return newTestRedis(t, client, RedisOptions{KeyPrefix: "{atlantis}:"})
	})
}

func TestCommandLeaseConformanceMemory(t *testing.T) {
	enhancedtest.RunCommandLeaseConformance(t, func(*testing.T) enhanced.CommandLeaseStore {
		return NewMemoryCommandLeases()
	})
}
