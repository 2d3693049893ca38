package enhanced

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"

	"github.com/runatlantis/atlantis/server/events/command"
	"github.com/runatlantis/atlantis/server/events/models"
)

// FallbackJournal records, durably, which locks a fallback changed in the
// legacy database, so that the replay into the backend survives a crash of
// the replica: the next start replays what the journal names.
//
// The replay compares states, not changes: it makes the backend hold each
// named lock as the legacy database holds it now. So an entry is written, and
// synced, before the legacy change it announces; a crash in between leaves an
// entry for a change that never happened, which the replay finds already
// agreeing, or makes agree, as it should.
type FallbackJournal struct {
	path string

	mu      sync.Mutex
	file    *os.File
	entries map[string]*journalEntry
	// order is the order locks were first touched in, for a stable replay.
	order []string
}

// journalEntry is one lock, or with Command set one command lock, that a
// fallback changed.
type journalEntry struct {
	Project   models.Project `json:"project"`
	Workspace string         `json:"workspace,omitempty"`
	Command   *command.Name  `json:"command,omitempty"`
	// Displace are pulls the backend may still hold the lock for although the
	// fallback took it from them: the holder a fallback unlock released, or a
	// waiter the backend granted it to after the fallback began. The replay
	// replaces such a holder with the legacy database's; any other holder it
	// finds in the backend is a conflict, kept and reported.
	Displace []int `json:"displace,omitempty"`
}

func (e journalEntry) key() string {
	if e.Command != nil {
		return "command:" + e.Command.String()
	}
	return "lock:" + models.GenerateLockKey(e.Project, e.Workspace)
}

func (e journalEntry) displaces(pullNum int) bool {
	return slices.Contains(e.Displace, pullNum)
}

// OpenFallbackJournal reads the journal at path, which may not exist yet. An
// empty path keeps the journal in memory only, which a crash loses.
func OpenFallbackJournal(path string) (*FallbackJournal, error) {
	j := &FallbackJournal{path: path, entries: map[string]*journalEntry{}}
	if path == "" {
		return j, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return j, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the fallback journal %s: %w", path, err)
	}
	lines := bytes.Split(data, []byte("\n"))
	for i, line := range lines {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var e journalEntry
		if err := json.Unmarshal(line, &e); err != nil {
			if i == len(lines)-1 {
				// Torn by a crash while it was written, so the change it
				// announced was never made.
				break
			}
			return nil, fmt.Errorf("fallback journal %s line %d is not a journal entry (%v): fix or remove the line, "+
				"then check the locks it names in both databases", path, i+1, err)
		}
		j.add(e)
	}
	return j, nil
}

// add merges e into the entries. j.mu must be held, or j not yet shared.
func (j *FallbackJournal) add(e journalEntry) {
	k := e.key()
	existing, ok := j.entries[k]
	if !ok {
		j.entries[k] = &e
		j.order = append(j.order, k)
		return
	}
	for _, p := range e.Displace {
		if !existing.displaces(p) {
			existing.Displace = append(existing.Displace, p)
		}
	}
}

// touchLock records, durably, that the fallback is about to change the lock
// on project and workspace, taking it from the pulls in displace.
func (j *FallbackJournal) touchLock(project models.Project, workspace string, displace ...int) error {
	return j.write(journalEntry{Project: project, Workspace: workspace, Displace: displace})
}

// touchCommand records, durably, that the fallback is about to change the
// command lock on name.
func (j *FallbackJournal) touchCommand(name command.Name) error {
	return j.write(journalEntry{Command: &name})
}

func (j *FallbackJournal) write(e journalEntry) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.path != "" {
		line, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("encoding a fallback journal entry: %w", err)
		}
		if j.file == nil {
			f, err := os.OpenFile(j.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
			if err != nil {
				return fmt.Errorf("opening the fallback journal: %w", err)
			}
			j.file = f
		}
		w := bufio.NewWriter(j.file)
		w.Write(line)     // nolint: errcheck
		w.WriteByte('\n') // nolint: errcheck
		if err := w.Flush(); err != nil {
			return fmt.Errorf("writing the fallback journal %s: %w", j.path, err)
		}
		if err := j.file.Sync(); err != nil {
			return fmt.Errorf("syncing the fallback journal %s: %w", j.path, err)
		}
	}
	j.add(e)
	return nil
}

// pending returns the entries in the order their locks were first touched.
func (j *FallbackJournal) pending() []journalEntry {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := make([]journalEntry, 0, len(j.order))
	for _, k := range j.order {
		out = append(out, *j.entries[k])
	}
	return out
}

// empty says whether nothing waits to be replayed.
func (j *FallbackJournal) empty() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.order) == 0
}

// clear forgets every entry, once the replay made the backend agree.
func (j *FallbackJournal) clear() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.path != "" {
		if j.file != nil {
			if err := j.file.Close(); err != nil {
				return fmt.Errorf("closing the fallback journal %s: %w", j.path, err)
			}
			j.file = nil
		}
		if err := os.Remove(j.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("removing the replayed fallback journal %s: %w", j.path, err)
		}
	}
	j.entries = map[string]*journalEntry{}
	j.order = nil
	return nil
}

// Close closes the journal file; entries stay on disk for the next start.
func (j *FallbackJournal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.file == nil {
		return nil
	}
	err := j.file.Close()
	j.file = nil
	return err
}
