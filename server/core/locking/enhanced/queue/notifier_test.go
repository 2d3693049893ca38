package queue_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/queue"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// fakeGitHub keeps comments as GitHub does for the two calls the queue
// makes: hiding the bot's comments whose first line names a command, and
// adding one. beforeHide, if set, runs once at the start of the next hide,
// for what another replica does in between.
type fakeGitHub struct {
	mu         sync.Mutex
	comments   []fakeComment
	beforeHide func()
}

type fakeComment struct {
	pull   int
	body   string
	hidden bool
}

func (f *fakeGitHub) CreateComment(_ logging.SimpleLogging, _ models.Repo, pull int, body string, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.comments = append(f.comments, fakeComment{pull: pull, body: body})
	return nil
}

func (f *fakeGitHub) HidePrevCommandComments(_ logging.SimpleLogging, _ models.Repo, pull int, command string, _ string) error {
	f.mu.Lock()
	hook := f.beforeHide
	f.beforeHide = nil
	f.mu.Unlock()
	if hook != nil {
		hook()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, c := range f.comments {
		first, _, _ := strings.Cut(c.body, "\n")
		if c.pull == pull && strings.Contains(strings.ToLower(first), strings.ToLower(command)) {
			f.comments[i].hidden = true
		}
	}
	return nil
}

// visible are the comments on pull that are not hidden.
func (f *fakeGitHub) visible(pull int) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.comments {
		if c.pull == pull && !c.hidden {
			out = append(out, c.body)
		}
	}
	return out
}

// TestNotifier_PlacesThatMoveWhilePostedArePostedAgain: one replica reads
// pull 2's places (queued for a and b) and, before it posts them, another
// replica hands pull 2 the lock of b and posts its places (a only). The
// first one's post is then stale; it reads the places again and replaces
// it, so pull 2 shows one comment, with a only.
func TestNotifier_PlacesThatMoveWhilePostedArePostedAgain(t *testing.T) {
	srv := redistest.Start(t)
	github := &fakeGitHub{}
	first := newReplica(t, srv, true, time.Minute)
	second := newReplica(t, srv, true, time.Minute)
	firstNotifier := queue.NewNotifier(first.backend, github, true, nil)
	secondNotifier := queue.NewNotifier(second.backend, github, true, nil)
	ctx := context.Background()
	for _, dir := range []string{"a", "b"} {
		mustLock(t, first.backend, pullLock(dir, 1))
		enqueue(t, first.backend, pullLock(dir, 2), enhanced.PriorityNormal)
	}
	baseRepo := pullLock("a", 2).Pull.BaseRepo
	firstNotifier.TellPositions(baseRepo, 2)
	firstNotifier.Wait()
	Equals(t, 1, len(github.visible(2)))

	github.beforeHide = func() {
		_, err := second.backend.Unlock(ctx, pullLock("b", 1).Project, "default")
		Ok(t, err)
		secondNotifier.TellPositions(baseRepo, 2)
		secondNotifier.Wait()
	}
	firstNotifier.TellPositions(baseRepo, 2)
	firstNotifier.Wait()
	shown := github.visible(2)
	Equals(t, 1, len(shown))
	Assert(t, strings.Contains(shown[0], "`a`") && !strings.Contains(shown[0], "`b`"), "pull 2 shows stale places:\n%s", shown[0])
}
