package server

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/core/boltdb"
	"github.com/runatlantis/atlantis/server/events"
	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/commandlease"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// recordedComments is upstream's VCS client as far as a refused command
// needs it.
type recordedComments struct {
	mu       sync.Mutex
	comments []string
}

func (c *recordedComments) CreateComment(_ logging.SimpleLogging, _ models.Repo, pullNum int, comment string, _ string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.comments = append(c.comments, comment)
	return nil
}

func newTestLeasedRunner(t *testing.T, store enhanced.CommandLeaseStore, comments refusalCommenter, wait time.Duration) *leasedCommandRunner {
	t.Helper()
	leases, err := commandlease.NewManager(store, commandlease.Options{Replica: "test", TTL: 10 * time.Second, WaitTimeout: wait, Poll: 10 * time.Millisecond})
	Ok(t, err)
	if comments == nil {
		comments = &recordedComments{}
	}
	return &leasedCommandRunner{leases: leases, comments: comments, stopper: newPullStopper(t.TempDir(), logging.NewNoopLogger(t)), logger: logging.NewNoopLogger(t)}
}

// overlapMeter stands for upstream's command runner on every replica: it
// counts the commands running for each pull at once.
type overlapMeter struct {
	mu      sync.Mutex
	running map[int]int
	most    map[int]int
	total   int
	mostAll int
}

func (m *overlapMeter) run(pullNum int) {
	m.mu.Lock()
	m.running[pullNum]++
	m.total++
	m.most[pullNum] = max(m.most[pullNum], m.running[pullNum])
	m.mostAll = max(m.mostAll, m.total)
	m.mu.Unlock()
	time.Sleep(20 * time.Millisecond)
	m.mu.Lock()
	m.running[pullNum]--
	m.total--
	m.mu.Unlock()
}

func (m *overlapMeter) RunCommentCommand(_ models.Repo, _ *models.Repo, _ *models.PullRequest, _ models.User, pullNum int, _ *events.CommentCommand) {
	m.run(pullNum)
}

func (m *overlapMeter) RunAutoplanCommand(_ models.Repo, _ models.Repo, pull models.PullRequest, _ models.User) {
	m.run(pull.Num)
}

// Two replicas on one Redis receive commands for two pulls at once: each
// pull's commands run one at a time, the two pulls side by side.
func TestLeasedCommandRunner_OnePullsCommandsNeverOverlapAcrossReplicas(t *testing.T) {
	client := redistest.Start(t).Client(t)
	meter := &overlapMeter{running: map[int]int{}, most: map[int]int{}}
	var replicas []*leasedCommandRunner
	for range 2 {
		r, err := backends.NewRedis(client, backends.RedisOptions{})
		Ok(t, err)
		t.Cleanup(func() { _ = r.Close() })
		runner := newTestLeasedRunner(t, r, nil, time.Minute)
		runner.next = meter
		replicas = append(replicas, runner)
	}
	repo := models.Repo{FullName: "org/repo"}
	var wg sync.WaitGroup
	for i := range 40 {
		runner := replicas[i%2]
		pullNum := 1 + i%4/2 // pulls 1 and 2, each on both replicas
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%3 == 0 {
				runner.RunAutoplanCommand(repo, repo, models.PullRequest{Num: pullNum, BaseRepo: repo}, models.User{})
				return
			}
			runner.RunCommentCommand(repo, nil, nil, models.User{}, pullNum, &events.CommentCommand{Name: command.Plan})
		}()
	}
	wg.Wait()
	Equals(t, map[int]int{1: 1, 2: 1}, meter.most)
	Assert(t, meter.mostAll == 2, "the two pulls' commands should run side by side; at most %d ran at once", meter.mostAll)
}

// blockingRunner holds its pull's lease until released.
type blockingRunner struct {
	started chan struct{}
	release chan struct{}
}

func (b blockingRunner) RunCommentCommand(models.Repo, *models.Repo, *models.PullRequest, models.User, int, *events.CommentCommand) {
	close(b.started)
	<-b.release
}

func (b blockingRunner) RunAutoplanCommand(models.Repo, models.Repo, models.PullRequest, models.User) {
}

func TestLeasedCommandRunner_ACommandThatWaitsTooLongIsRefusedWithAComment(t *testing.T) {
	store := backends.NewMemoryCommandLeases()
	comments := &recordedComments{}
	holder := newTestLeasedRunner(t, store, nil, time.Minute)
	blocker := blockingRunner{started: make(chan struct{}), release: make(chan struct{})}
	holder.next = blocker
	repo := models.Repo{FullName: "org/repo"}
	go holder.RunCommentCommand(repo, nil, nil, models.User{}, 5, &events.CommentCommand{Name: command.Apply, ProjectName: "app"})
	<-blocker.started
	defer close(blocker.release)

	refused := newTestLeasedRunner(t, store, comments, 100*time.Millisecond)
	ran := false
	refused.next = runFunc(func() { ran = true })
	refused.RunCommentCommand(repo, nil, nil, models.User{}, 5, &events.CommentCommand{Name: command.Plan, RepoRelDir: "app", Workspace: "default"})
	Assert(t, !ran, "the command must not run while another of its pull runs")
	Equals(t, 1, len(comments.comments))
	c := comments.comments[0]
	for _, want := range []string{"**Command not run**", "`atlantis plan -d app -w default` waited", "`atlantis apply -p app` of this pull request (running on test since",
		"Comment `atlantis plan -d app -w default` again once the other command has finished."} {
		Assert(t, strings.Contains(c, want), "comment lacks %q:\n%s", want, c)
	}
}

// runFunc is a command runner that runs f for every command.
type runFunc func()

func (f runFunc) RunCommentCommand(models.Repo, *models.Repo, *models.PullRequest, models.User, int, *events.CommentCommand) {
	f()
}

func (f runFunc) RunAutoplanCommand(models.Repo, models.Repo, models.PullRequest, models.User) { f() }

// A command that lost its lease has its processes in the pull's working
// directory stopped until it returns; other pulls' processes run on.
func TestPullStopper_StopsTheLostPullsProcessesOnly(t *testing.T) {
	dataDir := t.TempDir()
	pullDir := filepath.Join(dataDir, "repos", "org", "repo", "5", "default")
	otherDir := filepath.Join(dataDir, "repos", "org", "repo", "55", "default")
	for _, d := range []string{pullDir, otherDir} {
		Ok(t, os.MkdirAll(d, 0o700))
	}
	start := func(dir string) *exec.Cmd {
		cmd := exec.Command("sleep", "60")
		cmd.Dir = dir
		Ok(t, cmd.Start())
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	lost, other := start(pullDir), start(otherDir)

	stopper := newPullStopper(dataDir, logging.NewNoopLogger(t))
	returned := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		stopper.stopUntil(enhanced.PullRef{RepoFullName: "org/repo", Num: 5}, returned)
		close(stopped)
	}()
	waited := make(chan error, 1)
	go func() { waited <- lost.Wait() }()
	select {
	case err := <-waited:
		Assert(t, err != nil, "sleep must have been interrupted")
	case <-time.After(30 * time.Second):
		t.Fatal("the lost pull's process was not stopped")
	}
	close(returned)
	<-stopped
	Ok(t, syscall.Kill(other.Process.Pid, 0)) // another pull's process keeps running
}

// The queue's re-plans enter through the leased runner: a re-plan for a
// pull whose command runs elsewhere waits for it.
func TestQueueReplansWaitForThePullsCommandLease(t *testing.T) {
	store := backends.NewMemoryCommandLeases()
	other, err := commandlease.NewManager(store, commandlease.Options{Replica: "other", TTL: 10 * time.Second, WaitTimeout: time.Minute})
	Ok(t, err)
	held, err := other.Acquire(t.Context(), enhanced.PullRef{RepoFullName: "org/repo", Num: 5}, "atlantis apply")
	Ok(t, err)

	runner := newTestLeasedRunner(t, store, nil, time.Minute)
	ran := make(chan struct{})
	runner.next = runFunc(func() { close(ran) })
	database, err := boltdb.New(t.TempDir())
	Ok(t, err)
	defer database.Close() // nolint: errcheck
	lock := models.ProjectLock{Project: models.NewProject("org/repo", "dir", ""), Workspace: "default",
		Pull: models.PullRequest{Num: 5, BaseRepo: models.Repo{FullName: "org/repo"}}}
	go func() {
		_ = commandPlanner{leases: runner, pulls: database}.Replan(t.Context(), lock, func() error { return nil })
	}()

	select {
	case <-ran:
		t.Fatal("the re-plan ran while another command of its pull held the lease")
	case <-time.After(300 * time.Millisecond):
	}
	held.Release()
	select {
	case <-ran:
	case <-time.After(30 * time.Second):
		t.Fatal("the re-plan never ran after the lease was released")
	}
}

// With the BoltDB fallback, which declares one replica, a command runs while
// Redis is away: its lease is this process's, as the fallback's locks are.
func TestCommandLeases_TheFallbackRunsCommandsWhileRedisIsAway(t *testing.T) {
	redisSrv := redistest.Start(t)
	cfg := redisConfig(redisSrv.Addr)
	cfg.Fallback.Mode = FallbackBoltDB
	cfg.Features.CommandLeaseTTL = time.Second
	srv, _ := startTestServer(t, testUserConfig(t), cfg)
	redisSrv.Stop()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lease, err := srv.leases.Acquire(ctx, enhanced.PullRef{RepoFullName: "org/repo", Num: 1}, "atlantis plan")
	Ok(t, err)
	Ok(t, lease.Err())
	lease.Release()
}
