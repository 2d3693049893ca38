package enhanced

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"
)

func TestFallbackJournal(t *testing.T) {
	project := models.NewProject("org/repo", "dir", "")
	other := models.NewProject("org/repo", "other", "")
	cases := []struct {
		description string
		// write journals entries; raw, if set, is then appended to the file.
		write   func(j *FallbackJournal)
		raw     string
		expErr  string
		expKeys []string
		expPull map[string][]int
	}{
		{
			description: "entries survive a restart, merged per lock, in first-touch order",
			write: func(j *FallbackJournal) {
				Ok(t, j.touchLock(other, "default"))
				Ok(t, j.touchLock(project, "default", 1))
				Ok(t, j.touchCommand(command.Apply))
				Ok(t, j.touchLock(project, "default", 2))
				Ok(t, j.touchLock(project, "default", 1))
			},
			expKeys: []string{"lock:org/repo/other/default/", "lock:org/repo/dir/default/", "command:apply"},
			expPull: map[string][]int{"lock:org/repo/dir/default/": {1, 2}},
		},
		{
			description: "a line torn by a crash announced a change never made",
			write:       func(j *FallbackJournal) { Ok(t, j.touchLock(project, "default", 1)) },
			raw:         `{"project":{"RepoFullName":"org/re`,
			expKeys:     []string{"lock:org/repo/dir/default/"},
		},
		{
			description: "a damaged line before the last is an error naming it",
			raw:         "not json\n" + `{"project":{"RepoFullName":"org/repo","Path":"dir"},"workspace":"default"}` + "\n",
			expErr:      "line 1 is not a journal entry",
		},
	}
	for _, c := range cases {
		t.Run(c.description, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "journal")
			j, err := OpenFallbackJournal(path)
			Ok(t, err)
			if c.write != nil {
				c.write(j)
			}
			Ok(t, j.Close())
			if c.raw != "" {
				f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
				Ok(t, err)
				_, err = f.WriteString(c.raw)
				Ok(t, err)
				Ok(t, f.Close())
			}

			reopened, err := OpenFallbackJournal(path)
			if c.expErr != "" {
				ErrContains(t, c.expErr, err)
				ErrContains(t, path, err)
				return
			}
			Ok(t, err)
			var keys []string
			for _, e := range reopened.pending() {
				keys = append(keys, e.key())
				if want, ok := c.expPull[e.key()]; ok {
					Equals(t, want, e.Displace)
				}
			}
			Equals(t, c.expKeys, keys)

			Ok(t, reopened.clear())
			_, err = os.Stat(path)
			Assert(t, os.IsNotExist(err), "a replayed journal is left on disk: %v", err)
			again, err := OpenFallbackJournal(path)
			Ok(t, err)
			Assert(t, again.empty(), "entries came back after the journal was cleared")
		})
	}
}
