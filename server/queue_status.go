package server

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"time"

	"github.com/runatlantis/atlantis/server/controllers"
	"github.com/runatlantis/atlantis/server/events/models"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// QueueStatus is every project lock and who waits for it: the data of
// GET /api/locks/queue-status and of the /queue page. Its JSON is documented
// in runatlantis.io/docs/enhanced-locking-queue.md; change both together.
type QueueStatus struct {
	// QueueEnabled is false when enhanced locking or its priority queue is
	// off: Locks then lists the locks, each with an empty queue.
	QueueEnabled bool `json:"queue_enabled"`
	// Locks is in lock key order.
	Locks []LockQueueStatus `json:"locks"`
	// Commands are the commands running now on any replica, one per pull at
	// most (each holds its pull's command lease), by repo then pull; empty,
	// never null, when none runs.
	Commands []RunningCommandStatus `json:"commands"`
}

// RunningCommandStatus is one command holding its pull's command lease.
type RunningCommandStatus struct {
	Repo       string `json:"repo"`
	PullNumber int    `json:"pull_number"`
	// Command is as a user would comment it ("atlantis plan -p app"), or
	// "autoplan".
	Command        string    `json:"command"`
	Replica        string    `json:"replica"`
	RunningSince   time.Time `json:"running_since"`
	RunningSeconds int64     `json:"running_seconds"`
}

// LockQueueStatus is one lock, its holder and its queue.
type LockQueueStatus struct {
	// Key is upstream's lock key, the name /api/locks gives the lock.
	Key         string `json:"key"`
	Repo        string `json:"repo"`
	Path        string `json:"path"`
	Workspace   string `json:"workspace"`
	ProjectName string `json:"project_name"`
	// Holder is nil when the lock is free and pulls wait for it, as when it
	// was deleted outside enhanced locking and the next sweep has not handed
	// it on yet.
	Holder *LockHolderStatus `json:"holder"`
	// Queue is head first; empty, never null, when nobody waits.
	Queue []QueuedPullStatus `json:"queue"`
}

// LockHolderStatus is the pull holding a lock.
type LockHolderStatus struct {
	PullNumber  int       `json:"pull_number"`
	PullURL     string    `json:"pull_url"`
	User        string    `json:"user"`
	LockedSince time.Time `json:"locked_since"`
}

// QueuedPullStatus is one pull waiting for a lock.
type QueuedPullStatus struct {
	// Position is 1 for the pull that gets the lock next.
	Position       int    `json:"position"`
	PullNumber     int    `json:"pull_number"`
	PullURL        string `json:"pull_url"`
	User           string `json:"user"`
	Priority       string `json:"priority"`
	WaitingSeconds int64  `json:"waiting_seconds"`
	// WaitingSince is nil where the backend records no start, as Redis for
	// a bounded wait; WaitingSeconds is 0 then.
	WaitingSince *time.Time `json:"waiting_since"`
	// ExpiresAt is nil for an entry without a deadline.
	ExpiresAt *time.Time `json:"expires_at"`
	// Synchronous marks a replica blocked in a bounded wait
	// (--enhanced-locking-wait-timeout) rather than a durable entry.
	Synchronous bool `json:"synchronous"`
}

// queueStatusTimeout bounds the backend reads of one status request.
const queueStatusTimeout = 10 * time.Second

// readQueueStatus reads every lock through upstream's Locker, which is the
// enhanced adapter when enhanced locking is on and the legacy database when
// it is off, then merges in the backend's queues, so that a free lock with a
// queue is listed too. Where both know a lock, the queue's holder wins: the
// backend reads it in the same atomic step as the entries.
func (s *Server) readQueueStatus(ctx context.Context, now time.Time) (QueueStatus, error) {
	held, err := s.Locker.List()
	if err != nil {
		return QueueStatus{}, fmt.Errorf("listing the locks: %w", err)
	}
	byKey := make(map[string]*LockQueueStatus, len(held))
	for key, lock := range held {
		byKey[key] = newLockQueueStatus(key, lock.Project, lock.Workspace, &lock)
	}
	status := QueueStatus{QueueEnabled: s.queue != nil}
	if s.queue != nil {
		queues, err := s.queue.backend.Queues(ctx)
		if err != nil {
			return QueueStatus{}, fmt.Errorf("reading the lock queues: %w", err)
		}
		for _, q := range queues {
			key := models.GenerateLockKey(q.Project, q.Workspace)
			l := newLockQueueStatus(key, q.Project, q.Workspace, q.Holder)
			for _, e := range q.Entries {
				l.Queue = append(l.Queue, newQueuedPullStatus(e, now))
			}
			byKey[key] = l
		}
	}
	if status.Commands, err = s.readRunningCommands(ctx, now); err != nil {
		return QueueStatus{}, err
	}
	status.Locks = make([]LockQueueStatus, 0, len(byKey))
	for _, l := range byKey {
		status.Locks = append(status.Locks, *l)
	}
	sort.Slice(status.Locks, func(i, j int) bool { return status.Locks[i].Key < status.Locks[j].Key })
	return status, nil
}

func (s *Server) readRunningCommands(ctx context.Context, now time.Time) ([]RunningCommandStatus, error) {
	commands := []RunningCommandStatus{}
	if s.leases == nil {
		return commands, nil
	}
	leases, err := s.leases.Leases(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the command leases: %w", err)
	}
	for _, l := range leases {
		commands = append(commands, RunningCommandStatus{
			Repo:           l.Pull.RepoFullName,
			PullNumber:     l.Pull.Num,
			Command:        l.Command,
			Replica:        l.Replica,
			RunningSince:   l.Since,
			RunningSeconds: int64(max(now.Sub(l.Since), 0) / time.Second),
		})
	}
	sort.Slice(commands, func(i, j int) bool {
		if commands[i].Repo != commands[j].Repo {
			return commands[i].Repo < commands[j].Repo
		}
		return commands[i].PullNumber < commands[j].PullNumber
	})
	return commands, nil
}

func newLockQueueStatus(key string, project models.Project, workspace string, holder *models.ProjectLock) *LockQueueStatus {
	l := &LockQueueStatus{
		Key:         key,
		Repo:        project.RepoFullName,
		Path:        project.Path,
		Workspace:   workspace,
		ProjectName: project.ProjectName,
		Queue:       []QueuedPullStatus{},
	}
	if holder != nil {
		l.Holder = &LockHolderStatus{
			PullNumber:  holder.Pull.Num,
			PullURL:     holder.Pull.URL,
			User:        holder.User.Username,
			LockedSince: holder.Time,
		}
	}
	return l
}

func newQueuedPullStatus(e enhanced.QueueEntry, now time.Time) QueuedPullStatus {
	p := QueuedPullStatus{
		Position:    e.Position,
		PullNumber:  e.Lock.Pull.Num,
		PullURL:     e.Lock.Pull.URL,
		User:        e.Lock.User.Username,
		Priority:    e.Priority.String(),
		Synchronous: e.Synchronous,
		ExpiresAt:   timeOrNil(e.Expires),
	}
	if p.WaitingSince = timeOrNil(e.Enqueued); p.WaitingSince != nil {
		p.WaitingSeconds = int64(max(now.Sub(e.Enqueued), 0) / time.Second)
	}
	return p
}

// timeOrNil is nil for the zero time, which the backends leave where they
// record none.
func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// queueStatusAPI serves GET /api/locks/queue-status. It authenticates with
// upstream's own API middleware, so it answers exactly as upstream's
// authenticated API routes do: 503 while --api-secret is unset, 401 without
// the right X-Atlantis-Token header, and upstream's JSON envelope.
type queueStatusAPI struct {
	auth *controllers.APIMiddleware
	read func(ctx context.Context, now time.Time) (QueueStatus, error)
}

func (s *Server) newQueueStatusAPI() *queueStatusAPI {
	return &queueStatusAPI{auth: controllers.NewAPIMiddleware(s.apiSecret, s.Logger), read: s.readQueueStatus}
}

func (a *queueStatusAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !a.auth.RequireAuth(w, r) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), queueStatusTimeout)
	defer cancel()
	status, err := a.read(ctx, time.Now())
	if err != nil {
		a.auth.Responder.ServiceUnavailable(w, r, fmt.Sprintf("could not read the lock queues: %s; /readyz tells whether the locking backend answers", err))
		return
	}
	a.auth.Responder.Success(w, r, http.StatusOK, status)
}
