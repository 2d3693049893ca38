package redistest

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
)

// CommandCount returns calls per command since the last ResetStats, keyed by
// lower-case command name as INFO commandstats spells it ("get", "evalsha",
// "client|setinfo"). For a cluster it sums over the masters. The INFO call
// that reads the stats is itself counted ("info").
func CommandCount(t testing.TB, c redis.UniversalClient) map[string]int64 {
	t.Helper()
	ctx := context.Background()
	counts := map[string]int64{}
	switch cl := c.(type) {
	case *redis.ClusterClient:
		var mu sync.Mutex
		err := cl.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			info, err := m.Info(ctx, "commandstats").Result()
			if err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			addCommandStats(counts, info)
			return nil
		})
		if err != nil {
			t.Fatalf("redistest: INFO commandstats on cluster masters: %v", err)
		}
	case *redis.Client:
		info, err := cl.Info(ctx, "commandstats").Result()
		if err != nil {
			t.Fatalf("redistest: INFO commandstats: %v", err)
		}
		addCommandStats(counts, info)
	default:
		t.Fatalf("redistest: CommandCount: unsupported client type %T", c)
	}
	return counts
}

// ResetStats runs CONFIG RESETSTAT (on every master for a cluster).
func ResetStats(t testing.TB, c redis.UniversalClient) {
	t.Helper()
	ctx := context.Background()
	var err error
	switch cl := c.(type) {
	case *redis.ClusterClient:
		err = cl.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			return m.ConfigResetStat(ctx).Err()
		})
	case *redis.Client:
		err = cl.ConfigResetStat(ctx).Err()
	default:
		t.Fatalf("redistest: ResetStats: unsupported client type %T", c)
	}
	if err != nil {
		t.Fatalf("redistest: CONFIG RESETSTAT: %v", err)
	}
}

// addCommandStats parses lines like "cmdstat_get:calls=3,usec=12,...".
func addCommandStats(counts map[string]int64, info string) {
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimSpace(line)
		rest, ok := strings.CutPrefix(line, "cmdstat_")
		if !ok {
			continue
		}
		name, fields, ok := strings.Cut(rest, ":")
		if !ok {
			continue
		}
		for _, f := range strings.Split(fields, ",") {
			if v, ok := strings.CutPrefix(f, "calls="); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err == nil {
					counts[strings.ToLower(name)] += n
				}
			}
		}
	}
}
