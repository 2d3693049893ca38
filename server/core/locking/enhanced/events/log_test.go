package events_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/events"
)

// lines records each log call as "LEVEL message".
type lines struct {
	enhanced.NopLogger
	got []string
}

func (l *lines) Debug(format string, a ...any) {
	l.got = append(l.got, "DEBUG "+fmt.Sprintf(format, a...))
}
func (l *lines) Info(format string, a ...any) {
	l.got = append(l.got, "INFO "+fmt.Sprintf(format, a...))
}
func (l *lines) Warn(format string, a ...any) {
	l.got = append(l.got, "WARN "+fmt.Sprintf(format, a...))
}

func TestLogTo(t *testing.T) {
	lock := models.ProjectLock{
		Project:   models.NewProject("org/repo", "network", ""),
		Workspace: "default",
		Pull:      models.PullRequest{Num: 8, BaseRepo: models.Repo{FullName: "org/repo"}},
	}
	holder := lock
	holder.Pull.Num = 7
	cases := []struct {
		event events.Event
		want  string
	}{
		{events.Event{Type: events.EventLockAcquired, Lock: &lock, Duration: 3 * time.Millisecond},
			"DEBUG enhanced locking event lock_acquired: lock=org/repo/network/default/(org/repo#8) duration=3ms"},
		{events.Event{Type: events.EventLockQueued, Lock: &lock, Current: &holder},
			"DEBUG enhanced locking event lock_queued: lock=org/repo/network/default/(org/repo#8) current=org/repo/network/default/(org/repo#7)"},
		{events.Event{Type: events.EventLockTransferred, Lock: &lock, Duration: time.Hour},
			"INFO enhanced locking event lock_transferred: lock=org/repo/network/default/(org/repo#8) duration=1h0m0s"},
		{events.Event{Type: events.EventFallbackActivated, Backend: "legacy", Err: errors.New("dial tcp: refused")},
			`INFO enhanced locking event fallback_activated: backend=legacy err="dial tcp: refused"`},
		{events.Event{Type: events.EventLockConflict, Lock: &lock, Current: &holder},
			"WARN enhanced locking event lock_conflict: lock=org/repo/network/default/(org/repo#8) current=org/repo/network/default/(org/repo#7)"},
		{events.Event{Type: events.EventReplanFailed, Lock: &lock, Err: errors.New("plan failed")},
			`WARN enhanced locking event replan_failed: lock=org/repo/network/default/(org/repo#8) err="plan failed"`},
	}
	for _, c := range cases {
		t.Run(string(c.event.Type), func(t *testing.T) {
			var l lines
			events.LogTo(&l)(c.event)
			Equals(t, []string{c.want}, l.got)
		})
	}
}
