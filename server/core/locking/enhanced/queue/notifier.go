package queue

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// Commenter is the part of upstream's vcs.Client the queue comments through.
type Commenter interface {
	CreateComment(logger logging.SimpleLogging, repo models.Repo, pullNum int, comment string, command string) error
	HidePrevCommandComments(logger logging.SimpleLogging, repo models.Repo, pullNum int, command string, dir string) error
}

// positionCommand names the position comments for HidePrevCommandComments,
// which hides the bot's comments whose first line contains it. No other
// comment's first line does: upstream's start with "Ran <Command>", ours
// with the words below, and none says "lock queue position".
const positionCommand = "lock queue position"

// notifyTimeout bounds the VCS calls of one notification.
const notifyTimeout = time.Minute

// Notifier writes the queue's comments on pull requests.
//
// Position comments are posted in the background, one pull at a time, each
// pull once however often its places moved while it waited for its turn: a
// hand-over never waits for them, and a burst of hand-overs costs each
// moved pull one comment. One at a time is also how GitHub asks for the
// requests that create content.
type Notifier struct {
	queues   enhanced.QueueBackend
	vcs      Commenter
	autoPlan bool
	logger   logging.SimpleLogging

	// mu guards the pulls whose places are to be posted.
	mu sync.Mutex
	// idle is signalled when the poster stops.
	idle sync.Cond
	// pending lists the pulls to post, each once (in toPost), oldest
	// first. Invariant: a pull is taken off before its places are read, so a
	// move told after that read posts it again.
	pending []pullToPost
	toPost  map[pullKey]bool
	// posting says the poster runs; it stops when pending is empty.
	posting bool
}

type pullToPost struct {
	repo models.Repo
	num  int
}

// NewNotifier returns a notifier reading queues and commenting through vcs;
// autoPlan says whether pulls handed a lock are re-planned, which the
// comments tell them.
func NewNotifier(queues enhanced.QueueBackend, vcs Commenter, autoPlan bool, logger logging.SimpleLogging) *Notifier {
	if logger == nil {
		logger = enhanced.NopLogger{}
	}
	n := &Notifier{queues: queues, vcs: vcs, autoPlan: autoPlan, logger: logger, toPost: map[pullKey]bool{}}
	n.idle.L = &n.mu
	return n
}

// TellPositions has the pull's position comment replaced, in the
// background, by one listing every queue it is in, or only hidden when it is
// in none. It returns at once; Wait waits for the comment.
func (n *Notifier) TellPositions(repo models.Repo, pullNum int) {
	k := keyOf(repo.FullName, pullNum)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.toPost[k] {
		return
	}
	n.toPost[k] = true
	n.pending = append(n.pending, pullToPost{repo, pullNum})
	if !n.posting {
		n.posting = true
		go n.post()
	}
}

// Wait returns once no position comment is waiting to be posted.
func (n *Notifier) Wait() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for n.posting {
		n.idle.Wait()
	}
}

// post posts the pending pulls' places until none is left.
func (n *Notifier) post() {
	for {
		n.mu.Lock()
		if len(n.pending) == 0 {
			n.posting = false
			n.pending = nil
			n.idle.Broadcast()
			n.mu.Unlock()
			return
		}
		p := n.pending[0]
		n.pending = n.pending[1:]
		delete(n.toPost, keyOf(p.repo.FullName, p.num))
		n.mu.Unlock()

		ctx, cancel := context.WithTimeout(context.Background(), notifyTimeout)
		moved, err := n.postPositions(ctx, p.repo, p.num)
		cancel()
		if err == nil && moved {
			n.TellPositions(p.repo, p.num)
		}
	}
}

// postPositions replaces the pull's position comment with its places now,
// then reads them again and says whether they moved meanwhile. Errors are
// logged (a missed position comment is noise lost, not a lock) and returned.
//
// Several replicas may post one pull's places at once (two of its projects
// handed over, a hand-over beside a pull leaving): each hides the old
// comments, then posts what it read, so one that read before another's
// change could post its stale places last. Whoever posted places that moved
// posts them again (the caller tells the pull again), so the post that lands
// last shows what the queues hold.
func (n *Notifier) postPositions(ctx context.Context, repo models.Repo, pullNum int) (moved bool, err error) {
	body, err := n.positions(ctx, repo, pullNum)
	if err != nil {
		return false, err
	}
	if err := n.vcs.HidePrevCommandComments(n.logger, repo, pullNum, positionCommand, ""); err != nil {
		n.logger.Warn("hiding the previous queue position comments of pull %s#%d: %s", repo.FullName, pullNum, err)
	}
	if body != "" {
		if err := n.vcs.CreateComment(n.logger, repo, pullNum, body, positionCommand); err != nil {
			return false, n.failed(repo, pullNum, "commenting its queue positions", err)
		}
	}
	now, err := n.positions(ctx, repo, pullNum)
	if err != nil {
		return false, err
	}
	return now != body, nil
}

// positions is the position comment for the pull's places now, or "" when it
// is in no queue.
func (n *Notifier) positions(ctx context.Context, repo models.Repo, pullNum int) (string, error) {
	entries, err := n.queues.PullEntries(ctx, repo.FullName, pullNum)
	if err != nil {
		return "", n.failed(repo, pullNum, "reading its queue entries", err)
	}
	if len(entries) == 0 {
		return "", nil
	}
	holders := make([]*models.ProjectLock, len(entries))
	depths := make([]int, len(entries))
	for i, e := range entries {
		q, err := n.queues.Queue(ctx, e.Lock.Project, e.Lock.Workspace)
		if err != nil {
			return "", n.failed(repo, pullNum, "reading a queue", err)
		}
		holders[i], depths[i] = q.Holder, len(q.Entries)
	}
	return positionsComment(entries, holders, depths, n.autoPlan), nil
}

// Queued tells a pull that has just queued its places, then the pulls it
// went ahead of their new ones: each was told its place when it queued, and
// an entry of a higher priority sorts before older entries. A pull that
// joins at the end of every queue moves nobody, so nobody else is told.
func (n *Notifier) Queued(ctx context.Context, repo models.Repo, pullNum int) {
	n.TellPositions(repo, pullNum)
	entries, err := n.queues.PullEntries(ctx, repo.FullName, pullNum)
	if err != nil {
		_ = n.failed(repo, pullNum, "reading its queue entries, to tell the pulls behind it", err)
		return
	}
	told := map[pullKey]bool{keyOf(repo.FullName, pullNum): true}
	for _, e := range entries {
		q, err := n.queues.Queue(ctx, e.Lock.Project, e.Lock.Workspace)
		if err != nil {
			_ = n.failed(repo, pullNum, "reading a queue, to tell the pulls behind it", err)
			continue
		}
		// Behind means after this pull's entry in the same read of the queue.
		behind := false
		for _, other := range q.Entries {
			k := keyOf(other.Lock.Pull.BaseRepo.FullName, other.Lock.Pull.Num)
			if k == keyOf(repo.FullName, pullNum) {
				behind = true
				continue
			}
			if !behind || other.Synchronous || told[k] {
				continue
			}
			told[k] = true
			n.TellPositions(other.Lock.Pull.BaseRepo, other.Lock.Pull.Num)
		}
	}
}

// QueuesMoved tells the pull that left queues (handed a lock, expired, or
// gone) the places it still has, and every pull still waiting in them, whose
// places moved up, its new ones; bounded waiters never (they are not told
// places).
func (n *Notifier) QueuesMoved(left models.PullRequest, queues []enhanced.LockQueue) {
	n.TellPositions(left.BaseRepo, left.Num)
	for _, q := range queues {
		for _, e := range q.Entries {
			if !e.Synchronous {
				n.TellPositions(e.Lock.Pull.BaseRepo, e.Lock.Pull.Num)
			}
		}
	}
}

// LeftQueues is QueuesMoved for a pull whose entries left their queues by
// its own doing (closed, unlocked): it reads what those queues hold now.
func (n *Notifier) LeftQueues(ctx context.Context, entries []enhanced.QueueEntry) {
	if len(entries) == 0 {
		return
	}
	queues := make([]enhanced.LockQueue, 0, len(entries))
	for _, e := range entries {
		q, err := n.queues.Queue(ctx, e.Lock.Project, e.Lock.Workspace)
		if err != nil {
			n.logger.Warn("telling the pulls queued for %q their new places: reading the queue: %s", key(e.Lock), err)
			continue
		}
		queues = append(queues, q)
	}
	n.QueuesMoved(entries[0].Lock.Pull, queues)
}

func (n *Notifier) failed(repo models.Repo, pullNum int, doing string, err error) error {
	err = fmt.Errorf("telling pull %s#%d its lock queue positions: %s: %w", repo.FullName, pullNum, doing, err)
	n.logger.Warn("%s", err)
	return err
}

// Transferred tells the pull it was handed a lock.
func (n *Notifier) Transferred(notice enhanced.QueueNotice) error {
	lock := notice.Entry.Lock
	return n.comment(lock, transferredComment(notice, n.autoPlan))
}

// Expired tells the pull its entry expired; holder is who still holds the
// lock, if anyone.
func (n *Notifier) Expired(notice enhanced.QueueNotice, holder *models.ProjectLock) error {
	return n.comment(notice.Entry.Lock, expiredComment(notice, holder))
}

func (n *Notifier) comment(lock models.ProjectLock, body string) error {
	if err := n.vcs.CreateComment(n.logger, lock.Pull.BaseRepo, lock.Pull.Num, body, ""); err != nil {
		return fmt.Errorf("commenting on pull %s#%d: %w", lock.Pull.BaseRepo.FullName, lock.Pull.Num, err)
	}
	return nil
}

// freed is what positionsComment shows for a lock released a moment ago,
// whose hand-over is being announced.
const freed = "nobody (released just now)"

func positionsComment(entries []enhanced.QueueEntry, holders []*models.ProjectLock, depths []int, autoPlan bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "**Lock queue position**: this pull request waits for %s.\n\n", plural(len(entries), "locked project"))
	b.WriteString("| Project | Position | Locked by | Priority | Expires |\n|---|---|---|---|---|\n")
	var lockedBy []string
	for i, e := range entries {
		holder := freed
		if h := holders[i]; h != nil {
			holder = pullRef(h.Pull)
			if !slices.Contains(lockedBy, holder) {
				lockedBy = append(lockedBy, holder)
			}
		}
		fmt.Fprintf(&b, "| %s | %d of %d | %s | %s | %s |\n", projectName(e.Lock), e.Position, depths[i], holder, e.Priority,
			e.Expires.UTC().Format("2006-01-02 15:04 UTC"))
	}
	who := "the pull request holding a lock"
	if len(lockedBy) > 0 {
		who = strings.Join(lockedBy, " or ")
	}
	fmt.Fprintf(&b, "\nWhen %s is merged, closed or unlocked and this pull request is first in line, it gets the lock", who)
	if autoPlan {
		b.WriteString(" and Atlantis re-plans it, on its current head commit, with nobody commenting.")
	} else {
		b.WriteString(" and is told here; then comment `atlantis plan` to plan it.")
	}
	b.WriteString(" Planning again keeps its place; `atlantis unlock` or closing it leaves the queue.\n")
	return b.String()
}

func transferredComment(notice enhanced.QueueNotice, autoPlan bool) string {
	lock := notice.Entry.Lock
	var b strings.Builder
	fmt.Fprintf(&b, "**Lock handed over**: this pull request now holds the lock of %s, after waiting %s in its queue.\n\n",
		projectName(lock), waited(notice.Entry.Enqueued, notice.At))
	if autoPlan {
		fmt.Fprintf(&b, "Atlantis is re-planning it on the current head commit, as if you had commented `%s`.\n", planCommand(lock))
	} else {
		fmt.Fprintf(&b, "Comment `%s` to plan it.\n", planCommand(lock))
	}
	return b.String()
}

func expiredComment(notice enhanced.QueueNotice, holder *models.ProjectLock) string {
	lock := notice.Entry.Lock
	var b strings.Builder
	fmt.Fprintf(&b, "**Lock queue entry expired**: this pull request waited %s for the lock of %s and left its queue.\n\n",
		waited(notice.Entry.Enqueued, notice.At), projectName(lock))
	if holder != nil {
		fmt.Fprintf(&b, "It is still locked by %s. ", pullRef(holder.Pull))
	}
	fmt.Fprintf(&b, "Comment `%s` to queue again.\n", planCommand(lock))
	return b.String()
}

// planCommand is the comment that plans just this project.
func planCommand(lock models.ProjectLock) string {
	if lock.Project.ProjectName != "" {
		return "atlantis plan -p " + lock.Project.ProjectName
	}
	return fmt.Sprintf("atlantis plan -d %s -w %s", lock.Project.Path, lock.Workspace)
}

func projectName(lock models.ProjectLock) string {
	name := fmt.Sprintf("`%s` (workspace `%s`)", lock.Project.Path, lock.Workspace)
	if lock.Project.ProjectName != "" {
		name = fmt.Sprintf("project `%s`, ", lock.Project.ProjectName) + name
	}
	return name
}

func pullRef(pull models.PullRequest) string {
	if pull.URL != "" {
		return fmt.Sprintf("[#%d](%s)", pull.Num, pull.URL)
	}
	return fmt.Sprintf("#%d", pull.Num)
}

func waited(from, to time.Time) string {
	if from.IsZero() || to.Sub(from) < time.Second {
		return "under a second"
	}
	return to.Sub(from).Round(time.Second).String()
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
