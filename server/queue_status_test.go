package server

import (
	"context"
	"encoding/json"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// queueStatusEnvelope is upstream's API envelope around a QueueStatus.
type queueStatusEnvelope struct {
	Success bool        `json:"success"`
	Data    QueueStatus `json:"data"`
	Error   *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func getWithToken(srv *Server, path, token string) *httptest.ResponseRecorder {
	req := httptest.NewRequest("GET", path, nil)
	if token != "" {
		req.Header.Set("X-Atlantis-Token", token)
	}
	rec := httptest.NewRecorder()
	srv.Router.ServeHTTP(rec, req)
	return rec
}

// TestQueueStatusAPI_AuthenticatesAsUpstream checks every way a request can
// fail authentication against upstream's own authenticated API route
// (/api/drift/status): same status, same error code.
func TestQueueStatusAPI_AuthenticatesAsUpstream(t *testing.T) {
	cases := []struct {
		description string
		apiSecret   string
		token       string
		expStatus   int
		expCode     string
	}{
		{"no token", "api-secret", "", http.StatusUnauthorized, "UNAUTHORIZED"},
		{"wrong token", "api-secret", "api-secreT", http.StatusUnauthorized, "UNAUTHORIZED"},
		{"token prefix", "api-secret", "api", http.StatusUnauthorized, "UNAUTHORIZED"},
		{"API disabled", "", "anything", http.StatusServiceUnavailable, "SERVICE_UNAVAILABLE"},
	}
	for _, c := range cases {
		t.Run(c.description, func(t *testing.T) {
			userConfig := testUserConfig(t)
			userConfig.APISecret = c.apiSecret
			srv, _ := startTestServer(t, userConfig, DefaultEnhancedLockingConfig())
			for _, path := range []string{"/api/locks/queue-status", "/api/drift/status"} {
				rec := getWithToken(srv, path, c.token)
				Equals(t, c.expStatus, rec.Code)
				var body queueStatusEnvelope
				Ok(t, json.Unmarshal(rec.Body.Bytes(), &body))
				Assert(t, !body.Success && body.Error != nil, "%s: no error in %s", path, rec.Body)
				Equals(t, c.expCode, body.Error.Code)
			}
		})
	}
}

// TestQueueStatusAPI_ListsEveryLockAndQueue reads a held lock nobody waits
// for, a held lock with two pulls of different priority waiting, and a lock
// deleted outside enhanced locking with a pull still waiting: each appears,
// in lock key order, whatever order they were made in.
func TestQueueStatusAPI_ListsEveryLockAndQueue(t *testing.T) {
	srv, redisSrv := startQueueServer(t, testUserConfig(t))
	start := time.Now()
	queued := newQueueFixture(t, srv, "b")
	alone := fixtureLock("a", 5, "dave")
	lockHeld(t, srv, alone)
	freed := fixtureLock("c", 11, "erin")
	lockHeld(t, srv, freed)
	waiting := enqueue(t, srv, fixtureLock("c", 12, "frank"), enhanced.PriorityNormal)
	// As an upstream replica or an operator deletes a lock.
	Ok(t, redisSrv.Client(t).Del(context.Background(), "pr/org/repo/c/default/").Err())

	before := time.Now()
	rec := getWithToken(srv, "/api/locks/queue-status", "api-secret")
	Equals(t, http.StatusOK, rec.Code)
	Equals(t, "application/json", rec.Header().Get("Content-Type"))
	var body queueStatusEnvelope
	Ok(t, json.Unmarshal(rec.Body.Bytes(), &body))
	Assert(t, body.Success, "not a success: %s", rec.Body)
	status := body.Data
	Equals(t, true, status.QueueEnabled)

	keys := []string{}
	for _, l := range status.Locks {
		keys = append(keys, l.Key)
	}
	Equals(t, []string{"org/repo/a/default/", "org/repo/b/default/", "org/repo/c/default/"}, keys)

	a, b, c := status.Locks[0], status.Locks[1], status.Locks[2]
	Equals(t, LockQueueStatus{
		Key: "org/repo/a/default/", Repo: "org/repo", Path: "a", Workspace: "default",
		Holder: &LockHolderStatus{PullNumber: 5, PullURL: alone.Pull.URL, User: "dave", LockedSince: a.Holder.LockedSince},
		Queue:  []QueuedPullStatus{},
	}, a)
	// Upstream's Locker stamps the lock when it takes it.
	Assert(t, !a.Holder.LockedSince.Before(start) && !a.Holder.LockedSince.After(before),
		"locked since %s, want between %s and %s", a.Holder.LockedSince, start, before)

	Equals(t, "org/repo", b.Repo)
	Equals(t, &LockHolderStatus{PullNumber: 7, PullURL: queued.holder.Pull.URL, User: "alice", LockedSince: b.Holder.LockedSince}, b.Holder)
	Equals(t, 2, len(b.Queue))
	// High before low although low came first.
	for i, exp := range []struct {
		entry    enhanced.QueueEntry
		priority string
	}{{queued.high, "high"}, {queued.low, "low"}} {
		got := b.Queue[i]
		Equals(t, i+1, got.Position)
		Equals(t, exp.entry.Lock.Pull.Num, got.PullNumber)
		Equals(t, exp.entry.Lock.Pull.URL, got.PullURL)
		Equals(t, exp.entry.Lock.User.Username, got.User)
		Equals(t, exp.priority, got.Priority)
		Equals(t, false, got.Synchronous)
		Assert(t, got.WaitingSince != nil && got.WaitingSince.Equal(exp.entry.Enqueued), "waiting since %v, want %s", got.WaitingSince, exp.entry.Enqueued)
		Assert(t, got.ExpiresAt != nil && got.ExpiresAt.Equal(exp.entry.Expires), "expires %v, want %s", got.ExpiresAt, exp.entry.Expires)
		Assert(t, got.WaitingSeconds >= 0 && got.WaitingSeconds <= int64(time.Since(before)/time.Second)+1,
			"waiting %ds for an entry made a moment ago", got.WaitingSeconds)
	}

	Assert(t, c.Holder == nil, "the deleted lock still has a holder: %+v", c.Holder)
	Equals(t, 1, len(c.Queue))
	Equals(t, waiting.Lock.Pull.Num, c.Queue[0].PullNumber)
	Equals(t, "normal", c.Queue[0].Priority)
}

// TestQueueStatusAPI_JSONFields pins the field names the docs describe
// (runatlantis.io/docs/enhanced-locking-queue.md): a rename breaks clients.
func TestQueueStatusAPI_JSONFields(t *testing.T) {
	srv, _ := startQueueServer(t, testUserConfig(t))
	newQueueFixture(t, srv, "dir")
	lease, err := srv.leases.Acquire(context.Background(), enhanced.PullRef{RepoFullName: "org/repo", Num: 9}, "autoplan")
	Ok(t, err)
	defer lease.Release()
	rec := getWithToken(srv, "/api/locks/queue-status", "api-secret")
	Equals(t, http.StatusOK, rec.Code)
	var raw map[string]any
	Ok(t, json.Unmarshal(rec.Body.Bytes(), &raw))
	Equals(t, []string{"data", "error", "request_id", "success", "timestamp"}, sortedKeys(raw))
	data := raw["data"].(map[string]any)
	Equals(t, []string{"commands", "locks", "queue_enabled"}, sortedKeys(data))
	Equals(t, []string{"command", "pull_number", "replica", "repo", "running_seconds", "running_since"},
		sortedKeys(data["commands"].([]any)[0].(map[string]any)))
	lock := data["locks"].([]any)[0].(map[string]any)
	Equals(t, []string{"holder", "key", "path", "project_name", "queue", "repo", "workspace"}, sortedKeys(lock))
	Equals(t, []string{"locked_since", "pull_number", "pull_url", "user"}, sortedKeys(lock["holder"].(map[string]any)))
	entry := lock["queue"].([]any)[0].(map[string]any)
	Equals(t, []string{"expires_at", "position", "priority", "pull_number", "pull_url", "synchronous", "user", "waiting_seconds", "waiting_since"},
		sortedKeys(entry))
}

// TestQueueStatusAPI_QueueOff answers with the locks alone when enhanced
// locking, or only its queue, is off.
func TestQueueStatusAPI_QueueOff(t *testing.T) {
	for name, cfg := range queueOffConfigs() {
		t.Run(name, func(t *testing.T) {
			srv, _ := startTestServer(t, testUserConfig(t), cfg)
			lock := fixtureLock("dir", 3, "alice")
			lockHeld(t, srv, lock)
			rec := getWithToken(srv, "/api/locks/queue-status", "api-secret")
			Equals(t, http.StatusOK, rec.Code)
			var body queueStatusEnvelope
			Ok(t, json.Unmarshal(rec.Body.Bytes(), &body))
			Equals(t, false, body.Data.QueueEnabled)
			Equals(t, 1, len(body.Data.Locks))
			got := body.Data.Locks[0]
			Equals(t, models.GenerateLockKey(lock.Project, lock.Workspace), got.Key)
			Equals(t, 3, got.Holder.PullNumber)
			Equals(t, []QueuedPullStatus{}, got.Queue)
		})
	}
}

func sortedKeys(m map[string]any) []string { return slices.Sorted(maps.Keys(m)) }

// TestQueueStatusAPI_ShowsBoundedWaits lists a replica blocked in a bounded
// wait beside the durable entries of the same lock, marked synchronous, with
// no start time: Redis records none for it.
func TestQueueStatusAPI_ShowsBoundedWaits(t *testing.T) {
	cfg := queueConfig(redistest.Start(t).Addr)
	cfg.Features.WaitTimeout = 3 * time.Second
	srv, _ := startTestServer(t, testUserConfig(t), cfg)
	newQueueFixture(t, srv, "dir")
	waiter := fixtureLock("dir", 10, "grace")
	done := make(chan error, 1)
	go func() {
		_, err := srv.Locker.TryLock(waiter.Project, waiter.Workspace, waiter.Pull, waiter.User)
		done <- err
	}()
	defer func() { Ok(t, <-done) }()

	var queue []QueuedPullStatus
	for start := time.Now(); len(queue) < 3; time.Sleep(20 * time.Millisecond) {
		Assert(t, time.Since(start) < cfg.Features.WaitTimeout, "the bounded wait never showed: %+v", queue)
		var body queueStatusEnvelope
		Ok(t, json.Unmarshal(getWithToken(srv, "/api/locks/queue-status", "api-secret").Body.Bytes(), &body))
		queue = body.Data.Locks[0].Queue
	}
	// Normal priority: behind high, ahead of the low entry that came first.
	Equals(t, []int{9, 10, 8}, []int{queue[0].PullNumber, queue[1].PullNumber, queue[2].PullNumber})
	wait := queue[1]
	Equals(t, 2, wait.Position)
	Equals(t, true, wait.Synchronous)
	Equals(t, false, queue[0].Synchronous || queue[2].Synchronous)
	Assert(t, wait.WaitingSince == nil && wait.WaitingSeconds == 0, "a bounded wait with a start: %+v", wait)
	Assert(t, wait.ExpiresAt != nil, "a bounded wait without its deadline")
}

// The status names the command each pull runs now and its replica, from the
// command leases every replica shares.
func TestQueueStatusAPI_ShowsRunningCommands(t *testing.T) {
	userConfig := testUserConfig(t)
	userConfig.APISecret = "api-secret"
	srv, _ := startQueueServer(t, userConfig)
	lease, err := srv.leases.Acquire(context.Background(), enhanced.PullRef{RepoFullName: "org/repo", Num: 9}, "atlantis apply -p app")
	Ok(t, err)
	defer lease.Release()

	var body queueStatusEnvelope
	Ok(t, json.Unmarshal(getWithToken(srv, "/api/locks/queue-status", "api-secret").Body.Bytes(), &body))
	Equals(t, 1, len(body.Data.Commands))
	got := body.Data.Commands[0]
	Equals(t, "org/repo", got.Repo)
	Equals(t, 9, got.PullNumber)
	Equals(t, "atlantis apply -p app", got.Command)
	Equals(t, replicaName(userConfig.Port), got.Replica)
	Assert(t, time.Since(got.RunningSince) < time.Hour, "running since %s", got.RunningSince)

	lease.Release()
	body = queueStatusEnvelope{}
	Ok(t, json.Unmarshal(getWithToken(srv, "/api/locks/queue-status", "api-secret").Body.Bytes(), &body))
	Equals(t, []RunningCommandStatus{}, body.Data.Commands)
}
