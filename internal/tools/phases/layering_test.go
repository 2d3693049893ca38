package phases

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	. "github.com/runatlantis/atlantis/testing"
)

// TestEveryFileIsInOnePhase reads the phase tables of CONTRIBUTING.md and
// fails for each file of the module in no phase or in two, and for each path
// of a table that names nothing.
func TestEveryFileIsInOnePhase(t *testing.T) {
	m := loadModule(t)
	for _, p := range m.assigned.Problems {
		if _, known := notInARowYet[p.Path]; !known || !strings.Contains(p.Text, "in no phase") {
			t.Errorf("CONTRIBUTING.md's phase plan: %s", p)
		}
	}
	for f, why := range notInARowYet {
		if _, ok := m.assigned.Phase[f]; ok || !m.exists(f) {
			t.Errorf("notInARowYet lists %s (%s), which now has a phase or is gone: remove the entry", f, why)
		}
	}
}

// notInARowYet are the files that no row of the phase table names yet: the
// rows are being rewritten, and the lead adds these to them.
var notInARowYet = map[string]string{
	"server/index_link.go":             "the queue page's link on upstream's index page: phase 4, beside server/queue_page.go",
	"server/index_link_test.go":        "its test",
	"server/templates/queue.html.tmpl": "the queue page's template, embedded by server/queue_page.go: phase 4",
	"server/healthz_bench_test.go":     "/healthz while a lock wait is pending with the fallback on: phase 3, beside the fallback",
}

// TestLayering fails when a file of phase N imports a package, or embeds a
// file, that only a later phase brings. A package split over phases begins in
// the first phase holding one of its non-test files. Test files count: a
// phase's tests run in its tree, so they may use only what that tree holds.
func TestLayering(t *testing.T) {
	m := loadModule(t)
	found := map[breach]string{}
	for _, pkg := range m.packages {
		for _, f := range pkg.files() {
			for b, text := range m.breaches(pkg, f) {
				found[b] = text
			}
		}
	}
	known := map[breach]bool{}
	for _, k := range knownBreaches {
		b := breach{k.file, k.uses}
		known[b] = true
		if _, ok := found[b]; !ok {
			t.Errorf("knownBreaches lists %s using %s (%s), which the code no longer does: remove the entry", k.file, k.uses, k.why)
		}
	}
	for _, b := range slices.SortedFunc(maps.Keys(found), compareBreaches) {
		if !known[b] {
			t.Errorf("%s", found[b])
		}
	}
}

// breach is a file using a package (its path in the module) or embedding a
// file that only a later phase brings.
type breach struct{ file, uses string }

func compareBreaches(a, b breach) int {
	if c := strings.Compare(a.file, b.file); c != 0 {
		return c
	}
	return strings.Compare(a.uses, b.uses)
}

type goPackage struct {
	Dir, ImportPath                                              string
	GoFiles, CgoFiles, TestGoFiles, XTestGoFiles, IgnoredGoFiles []string
	Error                                                        *struct{ Err string }
}

// files are the package's Go files, those its build constraints leave out
// included.
func (p goPackage) files() []string {
	return slices.Concat(p.GoFiles, p.CgoFiles, p.TestGoFiles, p.XTestGoFiles, p.IgnoredGoFiles)
}

type module struct {
	root, path string
	assigned   *Assignment
	plan       *Plan
	packages   []goPackage
	// begins is the phase in which each package, by import path, first has
	// a non-test file.
	begins map[string]string
	// first is a file of the package in that phase, for the messages.
	first map[string]string
}

var loadOnce = sync.OnceValues(load)

func loadModule(t *testing.T) *module {
	t.Helper()
	m, err := loadOnce()
	Ok(t, err)
	return m
}

func load() (*module, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return nil, fmt.Errorf("go env GOMOD: %w", err)
	}
	m := &module{root: filepath.Dir(strings.TrimSpace(string(out))), begins: map[string]string{}, first: map[string]string{}}
	doc, err := os.ReadFile(filepath.Join(m.root, "CONTRIBUTING.md"))
	if err != nil {
		return nil, err
	}
	if m.plan, err = Parse(doc); err != nil {
		return nil, err
	}
	files, err := moduleFiles(m.root)
	if err != nil {
		return nil, err
	}
	m.assigned = m.plan.Assign(files)
	if m.packages, err = listPackages(m.root); err != nil {
		return nil, err
	}
	out, err = exec.Command("go", "list", "-m").Output()
	if err != nil {
		return nil, fmt.Errorf("go list -m: %w", err)
	}
	m.path = strings.TrimSpace(string(out))
	for _, pkg := range m.packages {
		files := slices.Concat(pkg.GoFiles, pkg.CgoFiles)
		if len(files) == 0 {
			files = pkg.files()
		}
		for _, f := range files {
			rel := m.rel(pkg, f)
			phase, ok := m.assigned.Phase[rel]
			if ok && (m.begins[pkg.ImportPath] == "" || m.plan.Before(phase, m.begins[pkg.ImportPath])) {
				m.begins[pkg.ImportPath], m.first[pkg.ImportPath] = phase, rel
			}
		}
	}
	return m, nil
}

// moduleFiles are the files git tracks or would track, or, outside a git
// checkout (a tree make pr-series cut), every file below root.
func moduleFiles(root string) ([]string, error) {
	out, err := exec.Command("git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard").Output()
	if err == nil {
		var files []string
		for _, f := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
			if _, err := os.Stat(filepath.Join(root, f)); err == nil {
				files = append(files, f)
			}
		}
		return files, nil
	}
	if _, statErr := os.Stat(filepath.Join(root, ".git")); statErr == nil {
		return nil, fmt.Errorf("git ls-files in %s: %w", root, err)
	}
	var files []string
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(root, p)
		files = append(files, filepath.ToSlash(rel))
		return err
	})
	return files, err
}

func listPackages(root string) ([]goPackage, error) {
	cmd := exec.Command("go", "list", "-e", "-json=Dir,ImportPath,GoFiles,CgoFiles,TestGoFiles,XTestGoFiles,IgnoredGoFiles,Error", "./...")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list ./... in %s: %w", root, err)
	}
	var pkgs []goPackage
	for dec := json.NewDecoder(bytes.NewReader(out)); ; {
		var p goPackage
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			return pkgs, nil
		} else if err != nil {
			return nil, fmt.Errorf("go list ./...: %w", err)
		}
		if p.Error != nil {
			return nil, fmt.Errorf("go list ./...: %s: %s", p.ImportPath, p.Error.Err)
		}
		pkgs = append(pkgs, p)
	}
}

func (m *module) rel(pkg goPackage, file string) string {
	rel, _ := filepath.Rel(m.root, filepath.Join(pkg.Dir, file))
	return filepath.ToSlash(rel)
}

func (m *module) exists(f string) bool {
	_, err := os.Stat(filepath.Join(m.root, f))
	return err == nil
}

// breaches are the imports and embeds of one file that break the layering,
// each with its message.
func (m *module) breaches(pkg goPackage, file string) map[breach]string {
	rel := m.rel(pkg, file)
	phase, ok := m.assigned.Phase[rel]
	if !ok {
		return nil // TestEveryFileIsInOnePhase reports it
	}
	found := map[breach]string{}
	src, err := os.ReadFile(filepath.Join(pkg.Dir, file))
	if err != nil {
		found[breach{rel, "?"}] = err.Error()
		return found
	}
	f, err := parser.ParseFile(token.NewFileSet(), rel, src, parser.ImportsOnly)
	if err != nil {
		found[breach{rel, "?"}] = err.Error()
		return found
	}
	for _, imp := range f.Imports {
		path, _ := strconv.Unquote(imp.Path.Value)
		uses, ok := strings.CutPrefix(path, m.path+"/")
		if begins := m.begins[path]; ok && m.plan.Before(phase, begins) {
			found[breach{rel, uses}] = fmt.Sprintf("%s (phase %s) imports %s, which phase %s brings (%s): a file may use only what its phase and earlier ones bring; move the import, or the file to a later row",
				rel, phase, uses, begins, m.first[path])
		}
	}
	for _, g := range m.embeds(rel, src) {
		if gp := m.assigned.Phase[g]; m.plan.Before(phase, gp) {
			found[breach{rel, g}] = fmt.Sprintf("%s (phase %s) embeds %s, which is phase %s: a file may use only what its phase and earlier ones bring; move the embed, or the file to a later row",
				rel, phase, g, gp)
		}
	}
	return found
}

// embeds are the files of the module a Go file's //go:embed lines name. A
// pattern naming a folder embeds all below it.
func (m *module) embeds(file string, src []byte) []string {
	dir := path.Dir(file) + "/"
	var patterns, files []string
	for sc := bufio.NewScanner(bytes.NewReader(src)); sc.Scan(); {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "//go:embed "); ok {
			for _, p := range strings.Fields(rest) {
				if u, err := strconv.Unquote(p); err == nil {
					p = u
				}
				patterns = append(patterns, strings.TrimPrefix(p, "all:"))
			}
		}
	}
	for g := range m.assigned.Phase {
		rel, ok := strings.CutPrefix(g, dir)
		for ; ok && rel != "."; rel = path.Dir(rel) {
			if slices.ContainsFunc(patterns, func(p string) bool { ok, _ := path.Match(p, rel); return ok }) {
				files = append(files, g)
				break
			}
		}
	}
	slices.Sort(files)
	return files
}

// knownBreaches are the layering breaches of the code as it stands, each with
// why it is still there. The restructuring of issue 17 removes them: delete an
// entry when its breach goes (the test says which), never add one.
var knownBreaches = []struct{ file, uses, why string }{
	// cmd/ validates every flag at start-up with the features' own defaults and parsers.
	{"cmd/enhanced_locking_config.go", "server/core/locking/enhanced/backends", "the key prefix is validated by the Redis store"},
	{"cmd/enhanced_locking_config.go", "server/core/locking/enhanced/commandlease", "the lease TTL's default lives with the lease"},
	{"cmd/enhanced_locking_config.go", "server/core/locking/enhanced/queue", "priority rules are parsed by the queue; the notice lease's default lives there"},
	// The Redis store embeds every script in one file, the queue's and the command lease's too;
	// helpers.lua holds the hand-over that phase 2's release.lua calls.
	{"server/core/locking/enhanced/backends/redis_scripts.go", "server/core/locking/enhanced/backends/lua/command_lease_release.lua", "embedded by redis_scripts.go: the command lease's scripts"},
	{"server/core/locking/enhanced/backends/redis_scripts.go", "server/core/locking/enhanced/backends/lua/command_lease_renew.lua", "embedded by redis_scripts.go: the command lease's scripts"},
	{"server/core/locking/enhanced/backends/redis_scripts.go", "server/core/locking/enhanced/backends/lua/command_lease_try.lua", "embedded by redis_scripts.go: the command lease's scripts"},
	{"server/core/locking/enhanced/backends/redis_scripts.go", "server/core/locking/enhanced/backends/lua/enqueue.lua", "embedded by redis_scripts.go: the queue's scripts"},
	{"server/core/locking/enhanced/backends/redis_scripts.go", "server/core/locking/enhanced/backends/lua/helpers.lua", "embedded by redis_scripts.go: the queue's hand-over, included by every script"},
	{"server/core/locking/enhanced/backends/redis_scripts.go", "server/core/locking/enhanced/backends/lua/leave_queue.lua", "embedded by redis_scripts.go: the queue's scripts"},
	{"server/core/locking/enhanced/backends/redis_scripts.go", "server/core/locking/enhanced/backends/lua/outbox_ack.lua", "embedded by redis_scripts.go: the outbox's scripts"},
	{"server/core/locking/enhanced/backends/redis_scripts.go", "server/core/locking/enhanced/backends/lua/outbox_claim.lua", "embedded by redis_scripts.go: the outbox's scripts"},
	{"server/core/locking/enhanced/backends/redis_scripts.go", "server/core/locking/enhanced/backends/lua/outbox_mark.lua", "embedded by redis_scripts.go: the outbox's scripts"},
	{"server/core/locking/enhanced/backends/redis_scripts.go", "server/core/locking/enhanced/backends/lua/queue_read.lua", "embedded by redis_scripts.go: the queue's scripts"},
	{"server/core/locking/enhanced/backends/redis_scripts.go", "server/core/locking/enhanced/backends/lua/sweep.lua", "embedded by redis_scripts.go: the queue's scripts"},
	// The tests of the adapter's backend switches and of the queue worker collect events with
	// the phase-5 bus's collector.
	{"server/core/locking/enhanced/adapter_test.go", "server/core/locking/enhanced/events/eventstest", "the collector of published events"},
	{"server/core/locking/enhanced/queue/worker_test.go", "server/core/locking/enhanced/events/eventstest", "the collector of published events"},
	// A hand-over's re-plan goes through the command lease (phase 4b).
	{"server/queue_planner.go", "server/core/locking/enhanced/commandlease", "a lost lease ends the re-plan"},
	{"server/queue_planner_test.go", "server/core/locking/enhanced/commandlease", "a lost lease ends the re-plan"},
	// server/server.go is the composition root: it builds every feature.
	{"server/server.go", "server/core/locking/enhanced/backends", "the composition root builds it"},
	{"server/server.go", "server/core/locking/enhanced/commandlease", "the composition root builds it"},
	{"server/server.go", "server/core/locking/enhanced/events", "the composition root builds it"},
	{"server/server.go", "server/core/locking/enhanced/legacydb", "the composition root builds it"},
	{"server/server.go", "server/core/locking/enhanced/metrics", "the composition root builds it"},
	{"server/server.go", "server/core/locking/enhanced/queue", "the composition root builds it"},
	{"server/server.go", "server/core/redis", "the composition root builds it"},
	// server/routes.go asks the concrete Redis store for writes of non-enhanced replicas.
	{"server/routes.go", "server/core/locking/enhanced/backends", "a type assertion to *backends.Redis"},
	// The user config holds the later features' option types and defaults.
	{"server/user_config.go", "server/core/locking/enhanced/commandlease", "commandlease.Options and its defaults"},
	{"server/user_config.go", "server/core/locking/enhanced/queue", "queue.WorkerOptions and the notice lease's default"},
	// Tests named after server.go (so phase 1) that test the Redis, fallback and queue wiring.
	{"server/server_hardening_test.go", "server/core/locking/enhanced/backends", "a test of the wiring of a later phase"},
	{"server/server_hardening_test.go", "server/core/locking/enhanced/enhancedtest", "a test of the wiring of a later phase"},
	{"server/server_hardening_test.go", "server/core/locking/enhanced/legacydb", "a test of the wiring of a later phase"},
	{"server/server_hardening_test.go", "testing/redistest", "a test of the wiring of a later phase"},
	{"server/server_redis_test.go", "server/core/locking/enhanced/backends", "a test of the wiring of a later phase"},
	{"server/server_redis_test.go", "testing/redistest", "a test of the wiring of a later phase"},
	{"server/server_test.go", "server/core/locking/enhanced/backends", "a test of the wiring of a later phase"},
	{"server/server_test.go", "server/core/locking/enhanced/queue", "a test of the wiring of a later phase"},
}
