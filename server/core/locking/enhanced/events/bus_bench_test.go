package events_test

import (
	"sync/atomic"
	"testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/events"
)

// BenchmarkBus_Publish is what a lock operation pays to publish one event to
// the server's two standing subscribers (their buffer sizes), against
// publishing to nobody. Run: go test -run '^$' -bench Bus_Publish ./server/core/locking/enhanced/events/
func BenchmarkBus_Publish(b *testing.B) {
	e := numbered(0, 1)
	for _, c := range []struct {
		name    string
		buffers []int
	}{{"no subscriber", nil}, {"metrics and log", []int{4096, 1024}}} {
		b.Run(c.name, func(b *testing.B) {
			bus := events.NewBus(nil)
			var handled atomic.Int64
			for _, buffer := range c.buffers {
				bus.Subscribe("sub", buffer, func(events.Event) { handled.Add(1) })
			}
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					bus.Publish(e)
				}
			})
			b.StopTimer()
			bus.Close()
		})
	}
}
