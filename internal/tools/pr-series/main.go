// Command pr-series builds the pull requests of CONTRIBUTING.md's phase plan
// as stacked trees. Phase N's tree is the committed tree (git archive of
// HEAD) cut to the files of phases 1..N and the top-level files every phase
// has. In it, offline, it runs go build ./..., go vet ./... and go test -short
// of the packages phase N touches (the e2e suites and the testdrive test skip
// themselves under -short). It prints one PR-SERIES line per phase and exits
// 1 when a phase does not stand on its own.
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/atlantis-enhanced/atlantis/internal/tools/phases"
)

func main() {
	goCmd := flag.String("go", "go", "the go command")
	only := flag.String("phases", "", "comma-separated phases to build (default: all)")
	keep := flag.Bool("keep", false, "keep the trees and print where they are")
	flag.Parse()
	if err := run(*goCmd, *only, *keep); err != nil {
		fmt.Println("PR-SERIES FAIL:", err)
		os.Exit(1)
	}
}

func run(goCmd, only string, keep bool) error {
	rev := "HEAD"
	doc, err := git("show", rev+":CONTRIBUTING.md")
	if err != nil {
		return err
	}
	plan, err := phases.Parse(doc)
	if err != nil {
		return err
	}
	tree, err := archive(rev)
	if err != nil {
		return err
	}
	for _, p := range strings.Split(only, ",") {
		if p != "" && !slices.Contains(plan.Phases, p) {
			return fmt.Errorf("-phases names phase %q, which the plan does not have (%s)", p, strings.Join(plan.Phases, ", "))
		}
	}
	a := plan.Assign(slices.Sorted(maps.Keys(tree)))
	var failed []string
	for _, p := range a.Problems {
		// A file in no phase is in no tree: a phase that needs it fails below.
		fmt.Println("PR-SERIES plan:", p)
	}
	if len(a.Problems) > 0 {
		failed = append(failed, "the plan")
	}
	root, err := os.MkdirTemp("", "pr-series-")
	if err != nil {
		return err
	}
	if !keep {
		defer os.RemoveAll(root)
	}
	env := offline(goCmd)
	for _, phase := range plan.Phases {
		if only != "" && !slices.Contains(strings.Split(only, ","), phase) {
			continue
		}
		dir := filepath.Join(root, "phase-"+phase)
		ok, err := buildPhase(goCmd, env, plan, a, tree, phase, dir)
		if err != nil {
			return err
		}
		if !ok {
			failed = append(failed, phase)
		}
		if keep {
			fmt.Println("    tree:", dir)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%s: not every phase stands on its own", strings.Join(failed, ", "))
	}
	fmt.Println("PR-SERIES ok: every phase stands on its own")
	return nil
}

// buildPhase writes phase's tree into dir, builds, vets and tests it, and
// prints its line.
func buildPhase(goCmd string, env []string, plan *phases.Plan, a *phases.Assignment, tree map[string]file, phase, dir string) (bool, error) {
	start := time.Now()
	packages := map[string]bool{}
	for f, p := range a.Phase {
		if !plan.Before(phase, p) {
			if err := tree[f].write(filepath.Join(dir, f)); err != nil {
				return false, err
			}
		}
		if p == phase && strings.HasSuffix(f, ".go") && !strings.Contains(f, "/testdata/") {
			packages["./"+path.Dir(f)] = true
		}
	}
	for _, f := range a.Shared {
		if err := tree[f].write(filepath.Join(dir, f)); err != nil {
			return false, err
		}
	}
	steps := []struct {
		name string
		args []string
	}{
		{"build", []string{"build", "./..."}},
		{"vet", []string{"vet", "./..."}},
		{"test", append([]string{"test", "-short", "-count=1", "-timeout", "20m"}, slices.Sorted(maps.Keys(packages))...)},
	}
	line := fmt.Sprintf("PR-SERIES phase=%s packages=%d", phase, len(packages))
	var why []string
	ok := true
	for _, s := range steps {
		cmd := exec.Command(goCmd, s.args...)
		cmd.Dir, cmd.Env = dir, env
		out, err := cmd.CombinedOutput()
		result := "ok"
		if err != nil {
			result, ok = "FAIL", false
			why = append(why, fmt.Sprintf("  %s: go %s", s.name, strings.Join(s.args, " ")))
			why = append(why, reasons(out)...)
		}
		line += fmt.Sprintf(" %s=%s", s.name, result)
	}
	fmt.Printf("%s (%.1f s)\n", line, time.Since(start).Seconds())
	for _, w := range why {
		fmt.Println(w)
	}
	return ok, nil
}

// failureLine picks the lines of go's output that say what failed.
var failureLine = regexp.MustCompile(`^(FAIL|--- FAIL|panic:|\S+\.go:\d+|pattern |go: )`)

// reasons are the first lines of a failed step's output that say why, each
// once.
func reasons(out []byte) []string {
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		l = "    " + l
		if failureLine.MatchString(strings.TrimSpace(l)) && !strings.Contains(l, "go: finding module") && !slices.Contains(lines, l) && len(lines) < 12 {
			lines = append(lines, l)
		}
	}
	return lines
}

// offline is the environment of the go commands: the module cache only, no
// download of a module or a toolchain.
func offline(goCmd string) []string {
	flags, _ := exec.Command(goCmd, "env", "GOFLAGS").Output()
	return append(os.Environ(),
		"GOFLAGS="+strings.TrimSpace(string(flags))+" -mod=mod",
		"GOPROXY=off",
		"GOTOOLCHAIN=local",
		"GOWORK=off",
	)
}

type file struct {
	mode int64
	data []byte
}

func (f file) write(name string) error {
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		return err
	}
	return os.WriteFile(name, f.data, os.FileMode(f.mode).Perm())
}

// archive reads the committed tree at rev.
func archive(rev string) (map[string]file, error) {
	out, err := git("archive", "--format=tar", rev)
	if err != nil {
		return nil, err
	}
	files := map[string]file{}
	for r := tar.NewReader(bytes.NewReader(out)); ; {
		h, err := r.Next()
		if err == io.EOF {
			return files, nil
		}
		if err != nil {
			return nil, fmt.Errorf("git archive %s: %w", rev, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		data, err := io.ReadAll(r)
		if err != nil {
			return nil, err
		}
		files[h.Name] = file{h.Mode, data}
	}
}

func git(args ...string) ([]byte, error) {
	out, err := exec.Command("git", args...).Output()
	if err != nil {
		return nil, fmt.Errorf("git %s: %w", strings.Join(args, " "), err)
	}
	return out, nil
}
