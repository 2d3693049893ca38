package redistest

import (
	"context"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// RoundTrips is a client hook recording what the client sends, one entry per
// round trip: a command sent alone, or a pipeline. A cluster client sends a
// pipeline's per-node parts in parallel, so a pipeline is one round trip
// there too. Add it with client.AddHook.
type RoundTrips struct {
	mu    sync.Mutex
	trips [][]string
}

var _ redis.Hook = (*RoundTrips)(nil)

func (h *RoundTrips) record(cmds ...redis.Cmder) {
	names := make([]string, len(cmds))
	for i, c := range cmds {
		names[i] = strings.ToLower(c.Name())
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.trips = append(h.trips, names)
}

// Take returns the round trips recorded since the last Take, and forgets them.
func (h *RoundTrips) Take() [][]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	trips := h.trips
	h.trips = nil
	return trips
}

// Counts returns how many times each command was sent in trips, by lower-case
// name as INFO commandstats spells it.
func Counts(trips [][]string) map[string]int64 {
	counts := map[string]int64{}
	for _, trip := range trips {
		for _, name := range trip {
			counts[name]++
		}
	}
	return counts
}

func (h *RoundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *RoundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.record(cmd)
		return next(ctx, cmd)
	}
}

func (h *RoundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.record(cmds...)
		return next(ctx, cmds)
	}
}
