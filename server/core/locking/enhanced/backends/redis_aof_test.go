package backends

import (
	"context"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// TestQueuesSurviveARedisRestartWithAOF: with the append-only file synced on
// every write, a Redis that stops in the middle of queue traffic, by a
// shutdown or killed outright, comes back with every holder, every entry in
// its place with its priority and expiry, and every pending notice with the
// steps done; and releases made after the restart hand over as before it.
func TestQueuesSurviveARedisRestartWithAOF(t *testing.T) {
	for _, stop := range []struct {
		name string
		stop func(t *testing.T, srv *redistest.Server, client *redis.Client)
	}{
		{"shutdown", func(t *testing.T, srv *redistest.Server, _ *redis.Client) { srv.Stop() }},
		{"SIGKILL", killRedis},
	} {
		t.Run(stop.name, func(t *testing.T) {
			ctx := context.Background()
			srv := redistest.Start(t, redistest.WithAppendOnly())
			client := srv.Client(t)
			// Every write is on disk before Redis answers it, so a kill
			// loses nothing that was answered.
			Ok(t, client.ConfigSet(ctx, "appendfsync", "always").Err())
			r := newTestRedis(t, client, RedisOptions{})

			lock := func(dir string, pull int) models.ProjectLock {
				return enhancedtest.NewLock("org/repo", dir, "default", "", pull)
			}
			enqueue := func(dir string, pull int, p enhanced.Priority, timeout time.Duration) {
				res, err := r.Enqueue(ctx, enhancedtest.QueueRequest(lock(dir, pull), p, timeout))
				Ok(t, err)
				Assert(t, res.Queued, "pull %d not queued for %s", pull, dir)
			}
			// a: four entries, every priority, each with its own expiry.
			mustTryLock(t, r, lock("a", 1))
			enqueue("a", 2, enhanced.PriorityNormal, time.Hour)
			enqueue("a", 3, enhanced.PriorityHigh, 2*time.Hour)
			enqueue("a", 4, enhanced.PriorityLow, 3*time.Hour)
			enqueue("a", 5, enhanced.PriorityCritical, 4*time.Hour)
			// b: two entries of one priority, in arrival order.
			mustTryLock(t, r, lock("b", 1))
			enqueue("b", 6, enhanced.PriorityNormal, time.Hour)
			enqueue("b", 7, enhanced.PriorityNormal, time.Hour)
			// c: handed over past an expired entry, which leaves two
			// notices; one of them has a delivery step done.
			mustTryLock(t, r, lock("c", 8))
			enqueue("c", 10, enhanced.PriorityCritical, 50*time.Millisecond)
			enqueue("c", 9, enhanced.PriorityNormal, time.Hour)
			enqueue("c", 11, enhanced.PriorityLow, time.Hour)
			time.Sleep(100 * time.Millisecond)
			_, err := r.UnlockIfOwnedByPull(ctx, lock("c", 8).Project, "default", 8)
			Ok(t, err)
			notices, err := r.ClaimNotices(ctx, 0, 10)
			Ok(t, err)
			Equals(t, 2, len(notices))
			for _, n := range notices {
				if n.Kind == enhanced.NoticeTransferred {
					Ok(t, r.MarkNotice(ctx, n, enhanced.StepCommented, 0))
				}
			}

			before := queueSnapshot(t, r, []string{"a", "b", "c"})
			Equals(t, []string{"a:1<-5,3,2,4", "b:1<-6,7", "c:9<-11"}, before.Order)
			Equals(t, 2, len(before.Notices))

			Ok(t, r.Close())
			stop.stop(t, srv, client)
			srv.Restart()
			r = openRedis(t, client, RedisOptions{})

			after := queueSnapshot(t, r, []string{"a", "b", "c"})
			Equals(t, before, after)

			// Releases after the restart hand over in the same order.
			_, err = r.UnlockIfOwnedByPull(ctx, lock("a", 1).Project, "default", 1)
			Ok(t, err)
			Equals(t, 5, holderOf(t, r, lock("a", 1)))
			_, err = r.UnlockIfOwnedByPull(ctx, lock("a", 5).Project, "default", 5)
			Ok(t, err)
			Equals(t, 3, holderOf(t, r, lock("a", 1)))
			released, err := r.UnlockByPull(ctx, "org/repo", 1)
			Ok(t, err)
			Equals(t, 1, len(released))
			Equals(t, 6, holderOf(t, r, lock("b", 1)))
			_, err = r.Unlock(ctx, lock("c", 9).Project, "default")
			Ok(t, err)
			Equals(t, 11, holderOf(t, r, lock("c", 1)))
			notices, err = r.ClaimNotices(ctx, time.Minute, 10)
			Ok(t, err)
			var got []string
			for _, n := range notices {
				got = append(got, string(n.Kind)+" "+n.Entry.Lock.Project.Path+" "+strconv.Itoa(n.Entry.Lock.Pull.Num))
				Ok(t, r.AckNotice(ctx, n))
			}
			sort.Strings(got)
			Equals(t, []string{
				"expired c 10", "transferred a 3", "transferred a 5", "transferred b 6",
				"transferred c 11", "transferred c 9",
			}, got)
		})
	}
}

// killRedis kills the server outright, with no shutdown: what is on disk is
// what the append-only file synced.
func killRedis(t *testing.T, _ *redistest.Server, client *redis.Client) {
	info, err := client.Info(context.Background(), "server").Result()
	Ok(t, err)
	pid := 0
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "process_id:"); ok {
			pid, err = strconv.Atoi(v)
			Ok(t, err)
		}
	}
	Assert(t, pid > 0, "no process_id in INFO server")
	Ok(t, syscall.Kill(pid, syscall.SIGKILL))
}

// queueState is everything a restart must keep of some locks' queues.
// Exported fields, which Equals compares.
type queueState struct {
	// Order is "dir:holder<-queued pulls" per lock, to read at a glance.
	Order   []string
	Queues  []enhanced.LockQueue
	All     []enhanced.LockQueue
	Pulls   map[int][]enhanced.QueueEntry
	Notices []enhanced.QueueNotice
}

func queueSnapshot(t *testing.T, r *Redis, dirs []string) queueState {
	t.Helper()
	ctx := context.Background()
	s := queueState{Pulls: map[int][]enhanced.QueueEntry{}}
	for _, dir := range dirs {
		q, err := r.Queue(ctx, enhancedtest.NewLock("org/repo", dir, "default", "", 1).Project, "default")
		Ok(t, err)
		var pulls []string
		for _, e := range q.Entries {
			pulls = append(pulls, strconv.Itoa(e.Lock.Pull.Num))
		}
		holder := 0
		if q.Holder != nil {
			holder = q.Holder.Pull.Num
		}
		s.Order = append(s.Order, dir+":"+strconv.Itoa(holder)+"<-"+strings.Join(pulls, ","))
		s.Queues = append(s.Queues, q)
	}
	for pull := 1; pull <= 11; pull++ {
		entries, err := r.PullEntries(ctx, "org/repo", pull)
		Ok(t, err)
		s.Pulls[pull] = entries
	}
	all, err := r.Queues(ctx)
	Ok(t, err)
	s.All = all
	notices, err := r.ClaimNotices(ctx, 0, 100)
	Ok(t, err)
	for i := range notices {
		notices[i].Claim = "" // new on every claim
	}
	sort.Slice(notices, func(i, j int) bool { return notices[i].ID < notices[j].ID })
	s.Notices = notices
	return s
}
