package phases

import (
	"strings"
	"testing"

	. "github.com/runatlantis/atlantis/testing"
)

// plan is a CONTRIBUTING.md with one phase table of the given rows (phase,
// last cell).
func plan(t *testing.T, rows ...[2]string) *Plan {
	t.Helper()
	doc := "# Contributing\n\n## The six phases\n\n| Phase | Pull request | Folders |\n|---|---|---|\n"
	for _, r := range rows {
		doc += "| " + r[0] + " | a pull request, `not/read` here | " + r[1] + " |\n"
	}
	doc += "\n## The seams\n\n| Phase | Not | Read |\n|---|---|---|\n| 9 | x | `nowhere/` |\n"
	p, err := Parse([]byte(doc))
	Ok(t, err)
	return p
}

func TestAssign(t *testing.T) {
	files := []string{
		"go.mod", "Makefile", "main.go",
		"cmd/root.go", "cmd/server.go", "cmd/migrate.go", "cmd/server_test.go",
		"server/server.go", "server/queue.go", "server/queue_page.go", "server/queue_page_test.go",
		"server/queue_fixture_test.go", "server/other_test.go", "server/lua/delivery_claim.lua",
		"server/lua/delivery_seen.lua",
		"enhanced/backends/redis.go", "enhanced/backends/lua/acquire.lua", "enhanced/backends/lua/enqueue.lua",
		"enhanced/backends/lua/outbox_ack.lua", "enhanced/backends/lua/outbox_mark.lua",
		"enhanced/events/bus.go", "enhanced/events/event.go", "enhanced/events/eventstest/collector.go",
		"docs/a.md",
	}
	cases := []struct {
		name  string
		rows  [][2]string
		phase map[string]string
	}{
		{
			name: "a folder is whole, a file named later leaves it",
			rows: [][2]string{{"1", "`main.go`, `cmd/`, `server/`, `enhanced/`, `docs/`"}, {"3", "`enhanced/events/event.go`"}},
			phase: map[string]string{
				"main.go": "1", "cmd/root.go": "1", "enhanced/events/bus.go": "1",
				"enhanced/events/event.go": "3", "docs/a.md": "1",
			},
		},
		{
			name: "a folder whose parentheses open with a path names only those",
			rows: [][2]string{
				{"1", "`main.go`, `cmd/` (`root.go`, `server.go`), `server/` (`server.go`), `enhanced/` (the store, `notify`, `make bench`)"},
				{"6", "`cmd/`, `server/`, `docs/`"},
			},
			phase: map[string]string{
				"cmd/root.go": "1", "cmd/server.go": "1", "cmd/server_test.go": "1", "cmd/migrate.go": "6",
				"server/server.go": "1", "server/queue.go": "6", "enhanced/events/bus.go": "1",
			},
		},
		{
			name: "paths are read in their folder, from the root, then as the one place they end",
			rows: [][2]string{
				{"1", "`main.go`, `cmd/`, `server/`, `docs/`, `enhanced/` (with `backends/redis.go`, the store)"},
				{"4", "`lua/enqueue.lua`, `outbox_*.lua`, `server/queue*.go`"},
				{"5", "`.../events/` (the bus, `eventstest`'s collector)"},
			},
			phase: map[string]string{
				"enhanced/backends/redis.go": "1", "enhanced/backends/lua/acquire.lua": "1",
				"enhanced/backends/lua/enqueue.lua": "4", "enhanced/backends/lua/outbox_ack.lua": "4",
				"enhanced/backends/lua/outbox_mark.lua": "4", "server/queue.go": "4", "server/queue_page.go": "4",
				"enhanced/events/bus.go": "5", "enhanced/events/eventstest/collector.go": "5",
			},
		},
		{
			name: "a test file goes with the file it is named after, else with its folder",
			rows: [][2]string{{"1", "`main.go`, `cmd/`, `server/`, `enhanced/`, `docs/`"}, {"4", "`server/queue.go`, `server/queue_page.go`"}},
			phase: map[string]string{
				"server/queue_page_test.go": "4", "server/queue_fixture_test.go": "4", "server/other_test.go": "1",
			},
		},
		{
			name: "globs, and phases in series order",
			rows: [][2]string{{"5", "`enhanced/`"}, {"4b", "`server/lua/delivery_*.lua`"}, {"4", "`server/`"}, {"1", "`main.go`, `cmd/`, `docs/`"}},
			phase: map[string]string{
				"server/lua/delivery_claim.lua": "4b", "server/lua/delivery_seen.lua": "4b", "server/queue.go": "4",
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := plan(t, c.rows...).Assign(files)
			Equals(t, []Problem(nil), a.Problems)
			Equals(t, []string{"Makefile", "go.mod"}, a.Shared)
			for f, want := range c.phase {
				Equals(t, f+" "+want, f+" "+a.Phase[f])
			}
		})
	}
}

func TestAssignProblems(t *testing.T) {
	files := []string{"main.go", "go.mod", "cmd/server.go", "server/server.go", "server/x_test.go", "lone/a.go", "a/events/e.go", "b/events/e.go"}
	cases := []struct {
		name string
		rows [][2]string
		want []string
	}{
		{
			name: "a file in no phase, and its test",
			rows: [][2]string{{"1", "`main.go`, `cmd/`, `a/`, `b/`, `server/` (`x_test.go`)"}},
			want: []string{"lone/a.go: in no phase", "server/server.go: in no phase"},
		},
		{
			name: "a file named in two phases",
			rows: [][2]string{{"1", "`main.go`, `cmd/`, `server/`, `lone/`, `a/`, `b/`"}, {"2", "`lone/a.go`"}, {"3", "`lone/a.go`"}},
			want: []string{"lone/a.go: in two phases: 2 names it as `lone/a.go`, 3 as `lone/a.go`: keep one"},
		},
		{
			name: "a folder named whole in two phases",
			rows: [][2]string{{"1", "`main.go`, `cmd/`, `server/`, `lone/`, `a/`, `b/`"}, {"2", "`cmd/`"}},
			want: []string{"cmd/server.go: in two phases: 1 names it as `cmd/`, 2 as `cmd/`"},
		},
		{
			name: "a path that names nothing, or could be two places",
			rows: [][2]string{{"1", "`main.go`, `cmd/`, `server/`, `lone/`, `a/`, `b/`, `gone.go`, `.../events/`"}},
			want: []string{
				"phase 1 names `.../events/`, which could be in any of a/, b/: write more of its path",
				"phase 1 names `gone.go`, which is no file or folder of the module: write its path from the module root",
			},
		},
		{
			name: "a top-level file that is not Go",
			rows: [][2]string{{"1", "`main.go`, `cmd/`, `server/`, `lone/`, `a/`, `b/`, `go.mod`"}},
			want: []string{"go.mod: phase 1 names `go.mod`, a top-level file every phase has"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			problems := plan(t, c.rows...).Assign(files).Problems
			Equals(t, len(c.want), len(problems))
			for i, want := range c.want {
				Assert(t, strings.HasPrefix(problems[i].String(), want), "problem %d: %q does not start with %q", i, problems[i], want)
			}
		})
	}
}

func TestParse(t *testing.T) {
	const head = "## The six phases\n\n| Phase | Pull request | Folders |\n|---|---|---|\n"
	cases := []struct {
		name, doc, err string
	}{
		{"no table", "# Contributing\n\n## The six phases\n\nprose\n", "CONTRIBUTING.md has no phase table"},
		{"a phase that is no number", head + "| one | x | `a/` |\n", `line 5: phase "one" is not a phase number`},
		{"a parenthesis left open", head + "| 1 | x | `a/` (`b.go` |\n", "phase 1: a '(' without its ')'"},
		{"a parenthesis never opened", head + "| 1 | x | `a/`) |\n", "phase 1: a ')' without its '('"},
		{"a backtick left open", head + "| 1 | x | `a/ |\n", "an unclosed backtick"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.doc))
			ErrContains(t, c.err, err)
		})
	}
}
