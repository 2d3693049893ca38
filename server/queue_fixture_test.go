package server

import (
	"context"
	"log"
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"

	upstream "github.com/runatlantis/atlantis/server"
	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"
	"github.com/urfave/negroni/v3"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// queueConfig is enhanced locking on Redis with the priority queue on.
func queueConfig(addr string) EnhancedLockingConfig {
	cfg := redisConfig(addr)
	cfg.Features.PriorityQueue = true
	return cfg
}

// queueOffConfigs are the configurations without a queue, by name: enhanced
// locking off, and on without its queue.
func queueOffConfigs() map[string]EnhancedLockingConfig {
	enhancedOn := DefaultEnhancedLockingConfig()
	enhancedOn.Enabled = true
	return map[string]EnhancedLockingConfig{"enhanced locking off": DefaultEnhancedLockingConfig(), "queue off": enhancedOn}
}

// startQueueServer builds our server with the priority queue on a real
// Redis, its routes registered as Start registers them. The queue's worker
// is not started, so the queues stay as a test builds them.
func startQueueServer(t *testing.T, userConfig upstream.UserConfig) (*Server, *redistest.Server) {
	t.Helper()
	redisSrv := redistest.Start(t)
	srv, _ := startTestServer(t, userConfig, queueConfig(redisSrv.Addr))
	Assert(t, srv.queue != nil, "priority queue not built")
	return srv, redisSrv
}

// upstreamHandler is the handler chain upstream's Start serves the router
// through (recovery, then its request logger, which is where web basic auth
// is checked). Start itself listens on a fixed port until SIGINT, so tests
// build the same chain from upstream's exported parts.
func upstreamHandler(srv *Server) http.Handler {
	n := negroni.New(&negroni.Recovery{Logger: log.New(os.Stdout, "", log.LstdFlags)}, upstream.NewRequestLogger(srv.Server))
	n.UseHandler(srv.Router)
	return n
}

// queueFixture is a held lock with two pulls of different priority waiting
// for it, the lower one queued first.
type queueFixture struct {
	holder    models.ProjectLock
	low, high enhanced.QueueEntry
}

const fixtureQueueTimeout = 2 * time.Hour

func fixtureLock(dir string, pull int, user string) models.ProjectLock {
	return models.ProjectLock{
		Project:   models.NewProject("org/repo", dir, ""),
		Workspace: "default",
		Pull: models.PullRequest{
			Num:      pull,
			URL:      "https://github.com/org/repo/pull/" + strconv.Itoa(pull),
			Author:   user,
			BaseRepo: models.Repo{FullName: "org/repo"},
		},
		User: models.User{Username: user},
		Time: time.Now().Truncate(time.Second),
	}
}

// lockHeld takes lock through upstream's Locker, the adapter behind it.
func lockHeld(t *testing.T, srv *Server, lock models.ProjectLock) {
	t.Helper()
	resp, err := srv.Locker.TryLock(lock.Project, lock.Workspace, lock.Pull, lock.User)
	Ok(t, err)
	Assert(t, resp.LockAcquired, "pull %d did not get %s", lock.Pull.Num, resp.LockKey)
}

// enqueue puts lock's pull in the queue through the backend, as the adapter
// does for a refused plan, without the policy's PR comment.
func enqueue(t *testing.T, srv *Server, lock models.ProjectLock, p enhanced.Priority) enhanced.QueueEntry {
	t.Helper()
	res, err := srv.queue.backend.Enqueue(context.Background(), enhanced.QueueRequest{
		Lock: lock, Priority: p, Headstart: p.Headstart(time.Hour), Timeout: fixtureQueueTimeout,
	})
	Ok(t, err)
	Assert(t, res.Queued, "pull %d not queued", lock.Pull.Num)
	// The backend answers with the entry's place; the request is the caller's.
	res.Entry.Lock = lock
	return res.Entry
}

func newQueueFixture(t *testing.T, srv *Server, dir string) queueFixture {
	t.Helper()
	f := queueFixture{holder: fixtureLock(dir, 7, "alice")}
	lockHeld(t, srv, f.holder)
	f.low = enqueue(t, srv, fixtureLock(dir, 8, "bob"), enhanced.PriorityLow)
	f.high = enqueue(t, srv, fixtureLock(dir, 9, "carol"), enhanced.PriorityHigh)
	return f
}
