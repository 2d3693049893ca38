package backends

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

var _ enhanced.CommandLeaseStore = (*Redis)(nil)

// TryCommandLease runs command_lease_try.lua: the grant, the wait line and
// the expiry are judged in one script on Redis's clock, so two replicas asking
// at once never both get the lease.
func (r *Redis) TryCommandLease(ctx context.Context, req enhanced.CommandLeaseRequest) (enhanced.CommandLeaseState, error) {
	keys := r.keys.commandLease(req.Pull.RepoFullName, req.Pull.Num)
	vals, err := commandLeaseTryScript.Run(ctx, r.client, keys,
		req.Token, req.Replica, req.Command, req.TTL.Milliseconds(), req.WaiterTTL.Milliseconds(),
		req.Pull.RepoFullName, req.Pull.Num).Slice()
	if err != nil {
		return enhanced.CommandLeaseState{}, redisError(fmt.Sprintf("taking the command lease of %s", pullName(req.Pull)), err)
	}
	if len(vals) != 6 {
		return enhanced.CommandLeaseState{}, fmt.Errorf("taking the command lease of %s: unexpected reply %v", pullName(req.Pull), vals)
	}
	granted, _ := vals[0].(int64)
	ahead, _ := vals[1].(int64)
	state := enhanced.CommandLeaseState{Granted: granted == 1, Ahead: int(ahead)}
	state.Holder = commandLeaseOf(req.Pull, vals[2], vals[3], vals[4], vals[5])
	if state.Granted {
		// Listing only: a failure hides the lease from operators, never from
		// the lease's own checks.
		if err := r.client.SAdd(ctx, r.keys.commandLeases(), keys[0]).Err(); err != nil {
			r.logger.Warn("listing the command lease of %s: %s", pullName(req.Pull), err)
		}
	}
	return state, nil
}

// RenewCommandLease runs command_lease_renew.lua.
func (r *Redis) RenewCommandLease(ctx context.Context, pull enhanced.PullRef, token string, ttl time.Duration) (bool, error) {
	keys := r.keys.commandLease(pull.RepoFullName, pull.Num)
	n, err := commandLeaseRenewScript.Run(ctx, r.client, keys[:1], token, ttl.Milliseconds()).Int()
	if err != nil {
		return false, redisError(fmt.Sprintf("renewing the command lease of %s", pullName(pull)), err)
	}
	return n == 1, nil
}

// ReleaseCommandLease runs command_lease_release.lua.
func (r *Redis) ReleaseCommandLease(ctx context.Context, pull enhanced.PullRef, token string) error {
	keys := r.keys.commandLease(pull.RepoFullName, pull.Num)
	held, err := commandLeaseReleaseScript.Run(ctx, r.client, keys, token).Int()
	if err != nil {
		return redisError(fmt.Sprintf("releasing the command lease of %s", pullName(pull)), err)
	}
	if held == 1 {
		if err := r.client.SRem(ctx, r.keys.commandLeases(), keys[0]).Err(); err != nil {
			r.logger.Warn("unlisting the command lease of %s: %s", pullName(pull), err)
		}
	}
	return nil
}

// CommandLeases reads every listed lease; keys whose lease expired (its
// holder crashed before releasing) leave the listing.
func (r *Redis) CommandLeases(ctx context.Context) ([]enhanced.CommandLease, error) {
	keys, err := r.client.SMembers(ctx, r.keys.commandLeases()).Result()
	if err != nil {
		return nil, redisError("listing the command leases", err)
	}
	cmds := make([]*redis.SliceCmd, len(keys))
	if _, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = p.HMGet(ctx, k, "token", "replica", "command", "since", "repo", "pull")
		}
		return nil
	}); err != nil && err != redis.Nil && !redis.HasErrorPrefix(err, "WRONGTYPE") {
		return nil, redisError("reading the command leases", err)
	}
	var leases []enhanced.CommandLease
	var gone []any
	for i, cmd := range cmds {
		if err := cmd.Err(); err != nil {
			// Not a lease: listing the others matters more. Taking that
			// pull's lease reports the key.
			r.logger.Warn("listing the command leases: %s", redisError(fmt.Sprintf("reading key %q", keys[i]), err))
			continue
		}
		v := cmd.Val()
		if len(v) != 6 || v[0] == nil {
			gone = append(gone, keys[i])
			continue
		}
		num, _ := strconv.Atoi(fmt.Sprint(v[5]))
		pull := enhanced.PullRef{RepoFullName: fmt.Sprint(v[4]), Num: num}
		leases = append(leases, commandLeaseOf(pull, v[0], v[1], v[2], v[3]))
	}
	if len(gone) > 0 {
		if err := r.client.SRem(ctx, r.keys.commandLeases(), gone...).Err(); err != nil {
			r.logger.Warn("unlisting expired command leases: %s", err)
		}
	}
	return leases, nil
}

// commandLeaseOf builds a lease from the script's or the hash's fields; an
// empty token means nobody holds it.
func commandLeaseOf(pull enhanced.PullRef, token, replica, command, since any) enhanced.CommandLease {
	l := enhanced.CommandLease{Pull: pull, Token: str(token), Replica: str(replica), Command: str(command)}
	if ms, err := strconv.ParseInt(str(since), 10, 64); err == nil {
		l.Since = time.UnixMilli(ms)
	}
	return l
}

func str(v any) string {
	if v == nil {
		return ""
	}
	return fmt.Sprint(v)
}

func pullName(p enhanced.PullRef) string {
	return fmt.Sprintf("%s#%d", p.RepoFullName, p.Num)
}
