package backends

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// lossyClient reaches srv through a proxy that can lose replies, with no
// retries of its own and a short read timeout, so a lost reply surfaces as
// the timeout a replica sees.
func lossyClient(t *testing.T, srv *redistest.Server) (*redis.Client, *redistest.Proxy) {
	proxy := redistest.StartProxy(t, srv.Addr)
	opts := srv.Options()
	opts.Addr = proxy.Addr
	opts.MaxRetries = -1
	opts.ReadTimeout = 300 * time.Millisecond
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() }) // nolint: errcheck
	return c, proxy
}

// An acquisition whose reply was lost ran in Redis: the caller is told it
// holds the lock, not that nothing was granted.
func TestLostAcquireReplyIsResolved(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	client, proxy := lossyClient(t, srv)
	r := newTestRedis(t, client, RedisOptions{})
	lock := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)

	proxy.DropNextReply()
	acquired, curr, err := r.TryLock(ctx, enhancedtest.Request(lock))
	Ok(t, err)
	Assert(t, acquired, "the acquisition ran in Redis but the caller was told it failed")
	enhancedtest.EqualLocks(t, lock, curr)
	got, err := openRedis(t, srv.Client(t), RedisOptions{}).GetLock(ctx, lock.Project, lock.Workspace)
	Ok(t, err)
	Assert(t, got != nil && got.Pull.Num == 1, "Redis does not hold the lock the caller was given")
}

// When Redis stops answering after an acquisition ran, the caller hears that
// the outcome is unknown, and the lock is given back once Redis answers, so
// the pull never holds it unknowingly.
func TestUnresolvedAcquireIsGivenBack(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	client, proxy := lossyClient(t, srv)
	r := newTestRedis(t, client, RedisOptions{})
	direct := openRedis(t, srv.Client(t), RedisOptions{})
	lock := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	// Loads the script, as any earlier lock did on a running replica; a
	// lost NOSCRIPT answer would prove nothing.
	mustTryLock(t, r, enhancedtest.NewLock("org/repo", "other", "default", "", 2))

	proxy.DropReplies(true)
	acquired, _, err := r.TryLock(ctx, enhancedtest.Request(lock))
	Assert(t, !acquired, "granted while no reply came back")
	Assert(t, errors.Is(err, enhanced.ErrOutcomeUnknown), "want ErrOutcomeUnknown, got %v", err)
	Assert(t, errors.Is(err, enhanced.ErrBackendUnavailable), "want ErrBackendUnavailable, got %v", err)
	got, err := direct.GetLock(ctx, lock.Project, lock.Workspace)
	Ok(t, err)
	Assert(t, got != nil, "the acquisition did not run in Redis; the test proves nothing")

	proxy.DropReplies(false)
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err = direct.GetLock(ctx, lock.Project, lock.Workspace)
		Ok(t, err)
		if got == nil {
			break
		}
		Assert(t, time.Now().Before(deadline), "the unknown acquisition was never given back")
		time.Sleep(20 * time.Millisecond)
	}
}

// A release whose reply was lost is repeated with its call id, which answers
// what the first run did.
func TestLostReleaseReplyIsResolved(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	client, proxy := lossyClient(t, srv)
	r := newTestRedis(t, client, RedisOptions{})
	lock := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	mustTryLock(t, r, lock)

	proxy.DropNextReply()
	released, err := r.Unlock(ctx, lock.Project, lock.Workspace)
	Ok(t, err)
	Assert(t, released != nil, "the release ran but the caller was told nothing was released")
	enhancedtest.EqualLocks(t, lock, *released)
}

// A pull that asks again for a lock it holds adopts it: giving back the
// earlier acquisition (whose caller failed) no longer frees the lock the
// later caller was told it holds.
func TestGivingBackAnEarlierAcquisitionSparesTheLaterOne(t *testing.T) {
	ctx := context.Background()
	r := newTestRedis(t, redistest.Start(t).Client(t), RedisOptions{})
	lock := enhancedtest.NewLock("org/repo", "dir", "default", "", 1)
	mustTryLock(t, r, lock)
	earlier := storedValue(t, r, lock)
	mustTryLock(t, r, lock) // the same pull, from another replica

	k := r.keys.forProject(lock.Project, lock.Workspace)
	Ok(t, runAll(ctx, r.client, []scriptCall{leaveCall(k, "", earlier, false)})[0].Err())
	got, err := r.GetLock(ctx, lock.Project, lock.Workspace)
	Ok(t, err)
	Assert(t, got != nil, "giving back the earlier acquisition freed the later one's lock")
	enhancedtest.EqualLocks(t, lock, *got)
}
