package deadlock_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/deadlock"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// claimStores are the Claims implementations, each fresh.
func claimStores(t *testing.T) map[string]func(t *testing.T) deadlock.Claims {
	srv := redistest.Start(t)
	return map[string]func(t *testing.T) deadlock.Claims{
		"memory": func(*testing.T) deadlock.Claims { return deadlock.NewMemoryClaims() },
		"redis": func(t *testing.T) deadlock.Claims {
			client := srv.Client(t)
			Ok(t, client.FlushAll(context.Background()).Err())
			r, err := backends.NewRedis(client, backends.RedisOptions{KeyPrefix: "team1:"})
			Ok(t, err)
			t.Cleanup(func() { _ = r.Close() })
			return r
		},
	}
}

func TestClaims_OneOfManyAtOnceWins(t *testing.T) {
	for name, newClaims := range claimStores(t) {
		t.Run(name, func(t *testing.T) {
			claims := newClaims(t)
			var won atomic.Int32
			var wg sync.WaitGroup
			for range 20 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ok, err := claims.ClaimOnce(context.Background(), "deadlock:notify:abc", time.Hour)
					Ok(t, err)
					if ok {
						won.Add(1)
					}
				}()
			}
			wg.Wait()
			Equals(t, int32(1), won.Load())
			ok, err := claims.ClaimOnce(context.Background(), "deadlock:notify:other", time.Hour)
			Ok(t, err)
			Assert(t, ok, "another name is claimed apart")
			_, err = claims.ClaimOnce(context.Background(), "x", 0)
			Assert(t, err != nil, "a claim without a ttl never expires")
		})
	}
}

func TestClaims_AClaimEndsWithItsTTL(t *testing.T) {
	now := time.Unix(1000, 0)
	claims := deadlock.NewMemoryClaimsAt(func() time.Time { return now })
	ctx := context.Background()
	ok, _ := claims.ClaimOnce(ctx, "d", time.Minute)
	Assert(t, ok, "first claim")
	now = now.Add(time.Minute - time.Nanosecond)
	ok, _ = claims.ClaimOnce(ctx, "d", time.Minute)
	Assert(t, !ok, "claimed again before its ttl")
	now = now.Add(time.Nanosecond)
	ok, _ = claims.ClaimOnce(ctx, "d", time.Minute)
	Assert(t, ok, "not claimed again after its ttl")

	// Redis expires the key itself.
	r, err := backends.NewRedis(redistest.Start(t).Client(t), backends.RedisOptions{})
	Ok(t, err)
	t.Cleanup(func() { _ = r.Close() })
	ok, err = r.ClaimOnce(ctx, "d", 50*time.Millisecond)
	Ok(t, err)
	Assert(t, ok, "first claim")
	ok, _ = r.ClaimOnce(ctx, "d", 50*time.Millisecond)
	Assert(t, !ok, "claimed twice")
	deadline := time.Now().Add(10 * time.Second)
	for !ok && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		ok, err = r.ClaimOnce(ctx, "d", time.Hour)
		Ok(t, err)
	}
	Assert(t, ok, "the claim never expired")
}
