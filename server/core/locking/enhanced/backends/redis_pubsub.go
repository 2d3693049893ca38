package backends

import (
	"context"
	"strings"

	"github.com/redis/go-redis/v9"
)

// wakeups signals on the returned channel at every message sub receives and
// at every confirmation of its (re)subscription, until ctx is done or sub is
// closed. Signals coalesce: the reader re-reads the state it waits on.
//
// Redis drops what is published while a subscriber is disconnected, and
// go-redis resubscribes after a reconnect without telling a Channel reader.
// Waking on each confirmation makes the reader re-read what was written in
// the gap, so no write goes unnoticed until the next poll or heartbeat.
func wakeups(ctx context.Context, sub *redis.PubSub) <-chan struct{} {
	out := make(chan struct{}, 1)
	in := sub.ChannelWithSubscriptions()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case m, ok := <-in:
				if !ok {
					return
				}
				if s, isSub := m.(*redis.Subscription); isSub && strings.HasSuffix(s.Kind, "unsubscribe") {
					continue
				}
				select {
				case out <- struct{}{}:
				default:
				}
			}
		}
	}()
	return out
}
