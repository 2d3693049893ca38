package enhancedtest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// Lease lengths of the suite. Long ones never lapse while a case runs, even
// on a stalled machine; short ones lapse during leaseLapse.
const (
	longLease  = time.Minute
	shortLease = 150 * time.Millisecond
	leaseLapse = 600 * time.Millisecond
)

// RunCommandLeaseConformance checks the CommandLeaseStore invariants: one
// holder at a time, waiters served in arrival order, a dead waiter or an
// unrenewed lease never wedges a pull, and compare-and-delete release.
func RunCommandLeaseConformance(t *testing.T, newStore func(t *testing.T) enhanced.CommandLeaseStore) {
	pull := enhanced.PullRef{RepoFullName: "owner/repo", Num: 7}
	ask := func(token string, ttl, waiterTTL time.Duration) enhanced.CommandLeaseRequest {
		return enhanced.CommandLeaseRequest{Pull: pull, Token: token, Replica: "replica-" + token, Command: "plan", TTL: ttl, WaiterTTL: waiterTTL}
	}
	try := func(t *testing.T, s enhanced.CommandLeaseStore, req enhanced.CommandLeaseRequest) enhanced.CommandLeaseState {
		t.Helper()
		state, err := s.TryCommandLease(context.Background(), req)
		Ok(t, err)
		return state
	}
	cases := []struct {
		name string
		run  func(t *testing.T, s enhanced.CommandLeaseStore)
	}{
		{"waiters see the holder and their place, in arrival order", func(t *testing.T, s enhanced.CommandLeaseStore) {
			Assert(t, try(t, s, ask("a", longLease, longLease)).Granted, "the first token gets the lease")
			b := try(t, s, ask("b", longLease, longLease))
			Assert(t, !b.Granted, "b waits")
			Equals(t, 0, b.Ahead)
			Equals(t, "a", b.Holder.Token)
			Equals(t, "replica-a", b.Holder.Replica)
			Equals(t, "plan", b.Holder.Command)
			Equals(t, 1, try(t, s, ask("c", longLease, longLease)).Ahead)
			Equals(t, 0, try(t, s, ask("b", longLease, longLease)).Ahead) // asking again keeps the place

			Ok(t, s.ReleaseCommandLease(context.Background(), pull, "a"))
			Assert(t, !try(t, s, ask("c", longLease, longLease)).Granted, "c asked first after the release but arrived after b")
			Assert(t, try(t, s, ask("b", longLease, longLease)).Granted, "b arrived first")
			Ok(t, s.ReleaseCommandLease(context.Background(), pull, "b"))
			Assert(t, try(t, s, ask("c", longLease, longLease)).Granted, "c is next")
		}},
		{"the holder renews; others cannot", func(t *testing.T, s enhanced.CommandLeaseStore) {
			try(t, s, ask("a", longLease, longLease))
			renewed, err := s.RenewCommandLease(context.Background(), pull, "a", longLease)
			Ok(t, err)
			Assert(t, renewed, "the holder renews")
			renewed, err = s.RenewCommandLease(context.Background(), pull, "b", longLease)
			Ok(t, err)
			Assert(t, !renewed, "a token that does not hold the lease cannot renew it")
			Assert(t, try(t, s, ask("a", longLease, longLease)).Granted, "asking again while holding renews")
		}},
		{"an unrenewed lease lapses and its old holder can neither renew nor release the next one", func(t *testing.T, s enhanced.CommandLeaseStore) {
			try(t, s, ask("a", shortLease, longLease))
			Assert(t, !try(t, s, ask("b", longLease, longLease)).Granted, "a still holds")
			time.Sleep(leaseLapse)
			Assert(t, try(t, s, ask("b", longLease, longLease)).Granted, "a's lease lapsed")
			renewed, err := s.RenewCommandLease(context.Background(), pull, "a", longLease)
			Ok(t, err)
			Assert(t, !renewed, "a lost its lease")
			Ok(t, s.ReleaseCommandLease(context.Background(), pull, "a"))
			Equals(t, "b", try(t, s, ask("c", longLease, longLease)).Holder.Token)
		}},
		{"a waiter that stops asking is skipped", func(t *testing.T, s enhanced.CommandLeaseStore) {
			try(t, s, ask("a", longLease, longLease))
			try(t, s, ask("dead", longLease, shortLease))
			try(t, s, ask("c", longLease, longLease))
			time.Sleep(leaseLapse)
			Ok(t, s.ReleaseCommandLease(context.Background(), pull, "a"))
			Assert(t, try(t, s, ask("c", longLease, longLease)).Granted, "the dead waiter holds nobody up")
		}},
		{"a waiter asking with a short waiter TTL costs the others nothing", func(t *testing.T, s enhanced.CommandLeaseStore) {
			try(t, s, ask("a", longLease, longLease))
			try(t, s, ask("b", longLease, longLease))
			try(t, s, ask("brief", longLease, shortLease))
			time.Sleep(leaseLapse)
			Equals(t, 1, try(t, s, ask("c", longLease, longLease)).Ahead) // b kept its place
			Ok(t, s.ReleaseCommandLease(context.Background(), pull, "a"))
			Assert(t, !try(t, s, ask("c", longLease, longLease)).Granted, "c arrived after b")
			Assert(t, try(t, s, ask("b", longLease, longLease)).Granted, "b kept its place")
		}},
		{"a waiter that gives up leaves the line", func(t *testing.T, s enhanced.CommandLeaseStore) {
			try(t, s, ask("a", longLease, longLease))
			try(t, s, ask("b", longLease, longLease))
			Equals(t, 1, try(t, s, ask("c", longLease, longLease)).Ahead)
			Ok(t, s.ReleaseCommandLease(context.Background(), pull, "b"))
			Equals(t, 0, try(t, s, ask("c", longLease, longLease)).Ahead)
			Equals(t, "a", try(t, s, ask("c", longLease, longLease)).Holder.Token)
		}},
		{"pulls do not share a lease", func(t *testing.T, s enhanced.CommandLeaseStore) {
			try(t, s, ask("a", longLease, longLease))
			other := ask("b", longLease, longLease)
			other.Pull.Num = 8
			Assert(t, try(t, s, other).Granted, "another pull's lease is free")
			other.Pull = enhanced.PullRef{RepoFullName: "owner/other", Num: 7}
			other.Token = "c"
			Assert(t, try(t, s, other).Granted, "another repo's pull 7 is another pull")
		}},
		{"the listing shows held leases only", func(t *testing.T, s enhanced.CommandLeaseStore) {
			try(t, s, ask("a", longLease, longLease))
			expiring := ask("b", shortLease, longLease)
			expiring.Pull.Num = 8
			try(t, s, expiring)
			try(t, s, ask("waiting", longLease, longLease))
			time.Sleep(leaseLapse)
			leases, err := s.CommandLeases(context.Background())
			Ok(t, err)
			Equals(t, 1, len(leases))
			Equals(t, pull, leases[0].Pull)
			Equals(t, "replica-a", leases[0].Replica)
			Equals(t, "plan", leases[0].Command)
			Assert(t, time.Since(leases[0].Since) < time.Hour, "since is when it was granted, got %s", leases[0].Since)
			Ok(t, s.ReleaseCommandLease(context.Background(), pull, "a"))
			leases, err = s.CommandLeases(context.Background())
			Ok(t, err)
			Equals(t, 0, len(leases))
		}},
		{"tokens asking at once: exactly one holds", func(t *testing.T, s enhanced.CommandLeaseStore) {
			const n = 16
			var wg sync.WaitGroup
			granted := make(chan string, n)
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					req := ask(fmt.Sprintf("t%d", i), longLease, longLease)
					if state, err := s.TryCommandLease(context.Background(), req); err == nil && state.Granted {
						granted <- req.Token
					}
				}()
			}
			wg.Wait()
			close(granted)
			var holders []string
			for g := range granted {
				holders = append(holders, g)
			}
			Equals(t, 1, len(holders))
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.run(t, newStore(t))
		})
	}
}
