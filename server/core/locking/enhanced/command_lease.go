package enhanced

import (
	"context"
	"time"
)

// CommandLeaseStore keeps the per-pull command leases: one pull's commands
// (plan, apply, unlock, a queue re-plan) run one at a time across every
// replica, because each first holds its pull's lease.
//
// Implementations keep these invariants under any interleaving of replicas:
//   - at most one token holds a pull's lease at any instant of the store's
//     clock; a lease not renewed within its TTL is free;
//   - tokens waiting for a held lease get it in the order they first asked,
//     skipping a waiter that stopped asking for longer than its waiter TTL
//     (its replica died), so a crashed replica never wedges a pull.
//
// The store's clock decides expiry. A holder must therefore treat its lease
// as lost at its own clock's renewal time plus the TTL at the latest (the
// lease package does), which is earlier than the store's expiry whenever the
// two clocks run at the same rate.
type CommandLeaseStore interface {
	// TryCommandLease takes the pull's lease for req.Token, or queues the
	// token behind the holder and earlier waiters and refreshes its place.
	// Asking again with a held token renews the lease.
	TryCommandLease(ctx context.Context, req CommandLeaseRequest) (CommandLeaseState, error)
	// RenewCommandLease extends a held lease by ttl. It reports false when
	// token no longer holds it: the lease expired and may be another's.
	RenewCommandLease(ctx context.Context, pull PullRef, token string, ttl time.Duration) (bool, error)
	// ReleaseCommandLease frees the lease if token holds it and removes the
	// token from the pull's waiters; it is a no-op otherwise.
	ReleaseCommandLease(ctx context.Context, pull PullRef, token string) error
	// CommandLeases lists the leases held now, for operators.
	CommandLeases(ctx context.Context) ([]CommandLease, error)
}

// PullRef names one pull request of one repository.
type PullRef struct {
	RepoFullName string
	Num          int
}

// CommandLeaseRequest asks for a pull's command lease.
type CommandLeaseRequest struct {
	Pull PullRef
	// Token is unique per command run; it holds or waits, never both.
	Token string
	// Replica and Command say who runs what, for operators and the comment a
	// refused command gets.
	Replica string
	Command string
	// TTL is how long the lease lasts without renewal once granted.
	TTL time.Duration
	// WaiterTTL is how long the token keeps its place without asking again.
	WaiterTTL time.Duration
}

// CommandLeaseState answers a TryCommandLease.
type CommandLeaseState struct {
	Granted bool
	// Holder is the lease now (this token's when Granted).
	Holder CommandLease
	// Ahead counts the waiters before this token; zero when Granted.
	Ahead int
}

// CommandLease is one held lease.
type CommandLease struct {
	Pull    PullRef
	Token   string
	Replica string
	Command string
	Since   time.Time
}

// PullFence says whether this replica may still act for a pull. The adapter
// asks it before each lock change and pull status write a pull's command
// makes, and the server before each VCS write, workflow step and git run, so
// a command whose lease ran out (its replica paused or cut off past the
// lease's deadline) cannot take, release or record anything for the pull
// while another replica's command runs. Releasing every lock of a pull
// (UnlockByPull, as closing it does) is never fenced: its locks must always
// be freed.
type PullFence interface {
	Check(repoFullName string, pullNum int) error
}
