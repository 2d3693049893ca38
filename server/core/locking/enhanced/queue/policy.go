package queue

import (
	"context"
	"sync"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// Policy is the adapter's enhanced.QueuePolicy. A lock request only reaches
// the adapter as a lock (upstream's db.Database says nothing of the command
// behind it), so the server's command runner tells the policy which pulls
// are running a plan here (Track): their refused requests queue, those of
// any other command (apply with locks taken on apply, import, state) fail as
// upstream's do. When the last command of a pull that queued ends, the pull
// is told its places in one comment, however many projects queued, and the
// pulls it went ahead of are told theirs.
type Policy struct {
	rules    *Rules
	timeout  time.Duration
	notifier *Notifier

	// onQueued hears of every queued request, without blocking: the
	// deadlock detector's trigger. Set before the policy is in use.
	onQueued func()

	mu   sync.Mutex
	runs map[pullKey]*pullRun
	// telling counts the notifications Left started.
	telling sync.WaitGroup
}

var _ enhanced.QueuePolicy = (*Policy)(nil)

type pullKey struct {
	repo string
	num  int
}

func keyOf(repo string, num int) pullKey { return pullKey{repo, num} }

// pullRun counts the commands of one pull running in this process.
type pullRun struct {
	commands, plans int
	queued          bool
	repo            models.Repo
}

// NewPolicy returns a policy that classifies by rules and queues plans'
// requests for timeout; notifier tells pulls their places.
func NewPolicy(rules *Rules, timeout time.Duration, notifier *Notifier) *Policy {
	return &Policy{rules: rules, timeout: timeout, notifier: notifier, runs: map[pullKey]*pullRun{}}
}

// Classify implements enhanced.QueuePolicy.
func (p *Policy) Classify(lock models.ProjectLock) (enhanced.Priority, time.Duration) {
	prio := p.rules.Classify(lock)
	return prio, p.rules.Headstart(prio)
}

// ShouldQueue implements enhanced.QueuePolicy: while the pull runs a plan.
func (p *Policy) ShouldQueue(lock models.ProjectLock) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	run := p.runs[keyOf(lock.Pull.BaseRepo.FullName, lock.Pull.Num)]
	return run != nil && run.plans > 0
}

// Timeout implements enhanced.QueuePolicy.
func (p *Policy) Timeout() time.Duration { return p.timeout }

// OnQueued makes f hear of every request put in a queue, or found there
// already; f must not block. Call it before the policy is in use.
func (p *Policy) OnQueued(f func()) { p.onQueued = f }

// Queued implements enhanced.QueuePolicy: the pull hears of it when its
// command ends.
func (p *Policy) Queued(res enhanced.EnqueueResult) {
	lock := res.Entry.Lock
	p.mu.Lock()
	if run := p.runs[keyOf(lock.Pull.BaseRepo.FullName, lock.Pull.Num)]; run != nil {
		run.queued = true
	}
	p.mu.Unlock()
	if p.onQueued != nil {
		p.onQueued()
	}
}

// Left implements enhanced.QueuePolicy: the pull that left hears that it
// waits for nothing more and the pulls behind it their new places, in the
// background, since it is called on the unlock path.
func (p *Policy) Left(entries []enhanced.QueueEntry) {
	if len(entries) == 0 {
		return
	}
	p.telling.Add(1)
	go func() {
		defer p.telling.Done()
		ctx, cancel := context.WithTimeout(context.Background(), notifyTimeout)
		defer cancel()
		p.notifier.LeftQueues(ctx, entries)
	}()
}

// Wait returns once the notifications Left started have ended and the
// position comments are posted.
func (p *Policy) Wait() {
	p.telling.Wait()
	p.notifier.Wait()
}

// Track records that a command of the pull runs until the returned function
// is called; plan says whether it plans. Call it around every command.
func (p *Policy) Track(repo models.Repo, pullNum int, plan bool) (done func()) {
	key := keyOf(repo.FullName, pullNum)
	p.mu.Lock()
	run := p.runs[key]
	if run == nil {
		run = &pullRun{repo: repo}
		p.runs[key] = run
	}
	run.commands++
	if plan {
		run.plans++
	}
	p.mu.Unlock()

	var once sync.Once
	return func() {
		once.Do(func() {
			p.mu.Lock()
			run.commands--
			if plan {
				run.plans--
			}
			last := run.commands == 0
			queued := last && run.queued
			if last {
				delete(p.runs, key)
			}
			p.mu.Unlock()
			if queued {
				ctx, cancel := context.WithTimeout(context.Background(), notifyTimeout)
				defer cancel()
				p.notifier.Queued(ctx, run.repo, pullNum)
			}
		})
	}
}
