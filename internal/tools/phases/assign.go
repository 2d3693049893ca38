package phases

import (
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"
)

// Assignment is the phase of every file of a tree.
type Assignment struct {
	// Phase maps a file, a slash path from the module root, to its phase.
	Phase map[string]string
	// Shared are the top-level files that are not Go (go.mod, go.sum, the
	// Makefile, README.md...): every phase has them.
	Shared []string
	// Problems are what makes the plan wrong for this tree, sorted.
	Problems []Problem
}

// Problem is a fault of the plan. Path is the file it is about, or "" when it
// is about a path the table names.
type Problem struct {
	Path string
	Text string
}

func (p Problem) String() string {
	if p.Path == "" {
		return p.Text
	}
	return p.Path + ": " + p.Text
}

// Assign gives each of files its phase. A file's phase is, first, that of a
// path naming it (a file or a glob); for a test file named after a file of its
// folder (x_test.go, x_fuzz_test.go after x.go), the phase of that file; else
// that of the nearest folder a row names whole. A top-level file that is not
// Go is in every phase.
func (p *Plan) Assign(files []string) *Assignment {
	t := newTree(files)
	a := &Assignment{Phase: map[string]string{}}
	named := map[string][]claim{}
	whole := map[string][]claim{}
	for _, c := range p.claims {
		folder, matched, err := t.resolve(c)
		switch {
		case err != nil:
			a.Problems = append(a.Problems, Problem{Text: err.Error()})
		case folder != "" && !c.listOnly:
			whole[folder] = append(whole[folder], c)
		case folder == "":
			for _, f := range matched {
				if isShared(f) {
					a.Problems = append(a.Problems, Problem{f, fmt.Sprintf("phase %s names `%s`, a top-level file every phase has: take it out of the row", c.phase, c.token)})
					continue
				}
				named[f] = append(named[f], c)
			}
		}
	}
	phaseOf := func(f string) (string, string) {
		if cs := named[f]; len(cs) > 0 {
			return onePhase(cs)
		}
		for dir := path.Dir(f); ; dir = path.Dir(dir) {
			if cs := whole[dir+"/"]; len(cs) > 0 {
				return onePhase(cs)
			}
			if dir == "." || dir == "/" {
				return "", "in no phase: name it, or a folder that holds it, in a row of the phase table"
			}
		}
	}
	for _, f := range t.sorted {
		if isShared(f) {
			a.Shared = append(a.Shared, f)
			continue
		}
		src := f
		if _, ok := named[f]; !ok {
			src = t.testedFile(f)
		}
		phase, problem := phaseOf(src)
		if problem != "" {
			if src != f {
				problem = fmt.Sprintf("named after %s, which is %s", src, problem)
			}
			a.Problems = append(a.Problems, Problem{f, problem})
			continue
		}
		a.Phase[f] = phase
	}
	slices.SortFunc(a.Problems, func(x, y Problem) int { return strings.Compare(x.String(), y.String()) })
	return a
}

// onePhase is the phase the claims agree on, or a problem naming them.
func onePhase(cs []claim) (string, string) {
	for _, c := range cs[1:] {
		if c.phase != cs[0].phase {
			return "", fmt.Sprintf("in two phases: %s names it as `%s`, %s as `%s`: keep one", cs[0].phase, cs[0].token, c.phase, c.token)
		}
	}
	return cs[0].phase, ""
}

func isShared(f string) bool {
	return !strings.Contains(f, "/") && !strings.HasSuffix(f, ".go")
}

type tree struct {
	files   map[string]bool
	folders map[string]bool // "a/b/"
	sorted  []string
}

func newTree(files []string) *tree {
	t := &tree{files: map[string]bool{}, folders: map[string]bool{}}
	for _, f := range files {
		t.files[f] = true
		for dir := path.Dir(f); dir != "."; dir = path.Dir(dir) {
			t.folders[dir+"/"] = true
		}
	}
	t.sorted = slices.Sorted(maps.Keys(t.files))
	return t
}

// testedFile is the file of the same folder a test file is named after (for
// a_b_test.go: a_b.go, else a.go), or f itself.
func (t *tree) testedFile(f string) string {
	if !strings.HasSuffix(f, "_test.go") {
		return f
	}
	dir, base := path.Split(strings.TrimSuffix(f, "_test.go"))
	for {
		if src := dir + base + ".go"; t.files[src] {
			return src
		}
		i := strings.LastIndexByte(base, '_')
		if i < 0 {
			return f
		}
		base = base[:i]
	}
}

// resolve finds what a claim names: a folder, or files. Its path is tried in
// each enclosing folder, innermost first, then from the module root, then as
// the one place in the module it is the end of (`.../events/`, `lua/x.lua`).
func (t *tree) resolve(c claim) (string, []string, error) {
	var bases []string
	for _, s := range c.scopes {
		folder, _, err := t.resolve(claim{phase: c.phase, token: s, scopes: bases})
		if err != nil {
			return "", nil, err
		}
		bases = append(bases, folder)
	}
	token, suffixOnly := strings.CutPrefix(c.token, ".../")
	if !suffixOnly {
		for i := len(bases); i >= 0; i-- {
			base := ""
			if i > 0 {
				base = bases[i-1]
			}
			if folder, files := t.match(base + token); folder != "" || len(files) > 0 {
				return folder, files, nil
			}
		}
	}
	places := map[string][]string{}
	for _, f := range t.sorted {
		if prefix, ok := t.endsWith(f, token); ok {
			places[prefix] = append(places[prefix], f)
		}
	}
	switch len(places) {
	case 0:
		return "", nil, fmt.Errorf("phase %s names `%s`, which is no file or folder of the module: write its path from the module root", c.phase, c.token)
	case 1:
		for prefix := range places {
			folder, files := t.match(prefix + token)
			return folder, files, nil
		}
	}
	return "", nil, fmt.Errorf("phase %s names `%s`, which could be in any of %s: write more of its path", c.phase, c.token, strings.Join(slices.Sorted(maps.Keys(places)), ", "))
}

// match is the folder, or the files, that pattern names from the root.
func (t *tree) match(pattern string) (string, []string) {
	if strings.HasSuffix(pattern, "/") {
		if t.folders[pattern] {
			return pattern, nil
		}
		return "", nil
	}
	var files []string
	for _, f := range t.sorted {
		if ok, _ := path.Match(pattern, f); ok {
			files = append(files, f)
		}
	}
	return "", files
}

// endsWith reports whether file f, or a folder holding it, ends with token,
// and returns the part of f before token.
func (t *tree) endsWith(f, token string) (string, bool) {
	segments := strings.Count(strings.TrimSuffix(token, "/"), "/") + 1
	parts := strings.Split(f, "/")
	if strings.HasSuffix(token, "/") {
		parts = parts[:len(parts)-1] // the folders holding f
	}
	for end := len(parts); end >= segments; end-- {
		tail := strings.Join(parts[end-segments:end], "/")
		if ok, _ := path.Match(strings.TrimSuffix(token, "/"), tail); ok {
			return strings.Join(parts[:end-segments], "/") + slashIf(end > segments), true
		}
		if !strings.HasSuffix(token, "/") {
			break // a file's token ends where the file ends
		}
	}
	return "", false
}

func slashIf(b bool) string {
	if b {
		return "/"
	}
	return ""
}
