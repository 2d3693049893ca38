package enhanced_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/core/locking"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// TestAdapter_KeepsUpstreamsErrorText: for the conditions upstream's
// databases report, the message begins with upstream's own words, so alerts
// and users matching them keep working; enhanced locking's context follows.
func TestAdapter_KeepsUpstreamsErrorText(t *testing.T) {
	for name, newAdapter := range adapterModes(t) {
		t.Run(name, func(t *testing.T) {
			applyLocker := locking.NewApplyClient(newAdapter(t), false, false)
			_, err := applyLocker.LockApply()
			Ok(t, err)
			_, err = applyLocker.LockApply()
			Assert(t, err != nil && strings.HasPrefix(err.Error(), "db transaction failed: lock already exists"),
				"taking a held apply lock: %v", err)
			Ok(t, applyLocker.UnlockApply())
			err = applyLocker.UnlockApply()
			Assert(t, err != nil && strings.HasPrefix(err.Error(), "db transaction failed: no lock exists"),
				"releasing a free apply lock: %v", err)
		})
	}
	t.Run("redis down", func(t *testing.T) {
		srv := redistest.Start(t)
		client := fastClient(t, srv)
		adapter := newRedisAdapter(t, client, openBolt(t, t.TempDir()), enhanced.AdapterOptions{})
		srv.Stop()
		_, _, err := adapter.TryLock(enhancedtest.NewLock("org/repo", "dir", "default", "", 1))
		Assert(t, err != nil && strings.HasPrefix(err.Error(), "db transaction failed: "), "unreachable Redis: %v", err)
		ErrContains(t, "enhanced locking could not lock: redis is unreachable, so no lock was granted", err)
	})
}

// TestAdapter_SaysWhenTheOutcomeIsUnknown: Redis stops answering after an
// acquisition ran. The user is told the outcome is unknown, never that no
// lock was granted.
func TestAdapter_SaysWhenTheOutcomeIsUnknown(t *testing.T) {
	srv := redistest.Start(t)
	proxy := redistest.StartProxy(t, srv.Addr)
	opts := srv.Options()
	opts.Addr = proxy.Addr
	opts.MaxRetries = -1
	opts.ReadTimeout = 300 * time.Millisecond
	client := redis.NewClient(opts)
	t.Cleanup(func() { client.Close() }) // nolint: errcheck
	adapter := newRedisAdapter(t, client, openBolt(t, t.TempDir()), enhanced.AdapterOptions{OperationTimeout: time.Second})
	// Loads the script, as any earlier lock did: a lost NOSCRIPT answer
	// would prove nothing.
	acquired, _, err := adapter.TryLock(enhancedtest.NewLock("org/repo", "warm", "default", "", 1))
	Ok(t, err)
	Assert(t, acquired, "lock not acquired")

	proxy.DropReplies(true)
	acquired, _, err = adapter.TryLock(enhancedtest.NewLock("org/repo", "dir", "default", "", 1))
	proxy.DropReplies(false)
	Assert(t, !acquired, "granted without an answer")
	Assert(t, errors.Is(err, enhanced.ErrOutcomeUnknown), "want ErrOutcomeUnknown, got %v", err)
	ErrContains(t, "whether the lock was granted is unknown", err)
	Assert(t, !strings.Contains(err.Error(), "no lock was granted"), "told the user no lock was granted: %v", err)
}
