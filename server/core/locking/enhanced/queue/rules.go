// Package queue is phase 4 of enhanced locking, the priority queue: the model
// of a queue of pulls waiting for a project lock, the order they are served in
// and the rules that give each request its priority (the
// --enhanced-locking-priority-rules file).
//
// The package imports only the root enhanced package and upstream Atlantis
// (and the YAML parser), so the backends and the server can both depend on it.
package queue

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	"go.yaml.in/yaml/v3"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// DefaultAgingStep is how long waiting counts as one priority level when the
// rules file does not say.
const DefaultAgingStep = time.Hour

// Rules gives each lock request its priority. It never changes after it is
// loaded, so one value is safe for concurrent use. The zero value and a nil
// *Rules behave as DefaultRules.
type Rules struct {
	// agingStep is zero only in the zero value; AgingStep reads it as
	// DefaultAgingStep. Otherwise 0 < agingStep <= enhanced.MaxAgingStep.
	agingStep time.Duration
	fallback  enhanced.Priority
	rules     []rule
}

// rule matches a request when every pattern it has matches; a nil pattern
// matches anything. Loading guarantees at least one pattern is set.
//
// headBranch is the only pattern on the pull rather than the lock: every
// pull queued for one lock has the same repo, dir, workspace and project,
// so without it no rule could put one of them ahead of another.
type rule struct {
	repo, dir, workspace, project, headBranch *glob
	priority                                  enhanced.Priority
}

// DefaultRules has no rules: every request is normal and ages by one level
// an hour.
func DefaultRules() *Rules {
	return &Rules{agingStep: DefaultAgingStep, fallback: enhanced.PriorityNormal}
}

// LoadRules reads the rules file at path. An empty path means no file was
// configured and gives DefaultRules.
func LoadRules(path string) (*Rules, error) {
	if path == "" {
		return DefaultRules(), nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading priority rules: %w: check the --enhanced-locking-priority-rules path", err)
	}
	return ParseRules(data, path)
}

// ParseRules reads a rules file's content; source names it in errors. It
// reports every problem it finds, each on its own line as
// "source:line: field: problem: fix", so one edit can fix them all.
func ParseRules(data []byte, source string) (*Rules, error) {
	p := &rulesParser{source: source}
	rules := p.parse(data)
	if len(p.errs) > 0 {
		return nil, errors.Join(p.errs...)
	}
	return rules, nil
}

// Classify is the priority of a request for lock: the priority of the first
// rule that matches it, or the file's default.
func (r *Rules) Classify(lock models.ProjectLock) enhanced.Priority {
	if r == nil {
		return enhanced.PriorityNormal
	}
	// Upstream builds every lock's project with NewProject, which cleans the
	// path ("" and "/" become "."); going through it again means a lock made
	// any other way matches the same rules as the one upstream would build.
	project := models.NewProject(lock.Project.RepoFullName, lock.Project.Path, lock.Project.ProjectName)
	for _, candidate := range r.rules {
		if matches(candidate.repo, project.RepoFullName) &&
			matches(candidate.dir, project.Path) &&
			matches(candidate.workspace, lock.Workspace) &&
			matches(candidate.project, project.ProjectName) &&
			matches(candidate.headBranch, lock.Pull.HeadBranch) {
			return candidate.priority
		}
	}
	return r.fallback
}

func matches(pattern *glob, name string) bool {
	return pattern == nil || pattern.match(name)
}

// AgingStep is how long waiting counts as one priority level.
func (r *Rules) AgingStep() time.Duration {
	if r == nil || r.agingStep == 0 {
		return DefaultAgingStep
	}
	return r.agingStep
}

// Headstart is how far ahead of its arrival a request of priority p sorts
// under these rules' aging step.
func (r *Rules) Headstart(p enhanced.Priority) time.Duration {
	return p.Headstart(r.AgingStep())
}

// Len is the number of rules, for logging what was loaded.
func (r *Rules) Len() int {
	if r == nil {
		return 0
	}
	return len(r.rules)
}

const (
	knownTopKeys  = "aging_step, default, rules"
	knownRuleKeys = "repo, dir, workspace, project, head_branch, priority"
	priorityNames = "critical, high, normal or low"
)

// rulesParser walks the YAML node tree rather than decoding into structs, so
// that every problem carries its line, unknown and duplicate keys are caught,
// and parsing goes on after a problem to report the next one.
type rulesParser struct {
	source string
	errs   []error
}

// errorf records a problem at node; field is the path of the offending key,
// such as "rules[1].priority", or "" for the file as a whole.
func (p *rulesParser) errorf(node *yaml.Node, field, format string, args ...any) {
	where := p.source
	if node.Line > 0 {
		where += ":" + strconv.Itoa(node.Line)
	}
	if field != "" {
		where += ": " + field
	}
	p.errs = append(p.errs, fmt.Errorf("%s: %s", where, fmt.Sprintf(format, args...)))
}

func (p *rulesParser) parse(data []byte) *Rules {
	loaded := DefaultRules()
	decoder := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := decoder.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return loaded // an empty file, or only comments
		}
		p.yamlError(err)
		return nil
	}
	var second yaml.Node
	if err := decoder.Decode(&second); !errors.Is(err, io.EOF) {
		if err != nil {
			p.yamlError(err)
		} else {
			p.errorf(&second, "", `a second YAML document: keep the rules in one document, without "---"`)
		}
		return nil
	}
	top := resolve(&doc)
	if top.Kind == yaml.DocumentNode {
		if len(top.Content) == 0 {
			return loaded
		}
		top = resolve(top.Content[0])
	}
	if isNull(top) {
		return loaded
	}
	if top.Kind != yaml.MappingNode {
		p.errorf(top, "", "the file must be a mapping with the keys %s; found %s", knownTopKeys, describe(top))
		return nil
	}
	for _, entry := range p.entries(top, "", knownTopKeys) {
		switch entry.key {
		case "aging_step":
			if step, ok := p.agingStep(entry.value); ok {
				loaded.agingStep = step
			}
		case "default":
			if priority, ok := p.priority(entry.value, "default"); ok {
				loaded.fallback = priority
			}
		case "rules":
			loaded.rules = p.rules(entry.value)
		default:
			p.errorf(entry.keyNode, "", "unknown key %q: known keys are %s", entry.key, knownTopKeys)
		}
	}
	return loaded
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): `)

// yamlError reports a syntax error in the same "source:N: " form as the
// other problems. The parser's line is where the construct around the
// mistake starts, often a line or more before the mistake itself, so the
// message says "at or after".
func (p *rulesParser) yamlError(err error) {
	const fix = "check the indentation (spaces, not tabs), brackets and quotes, and quote patterns that start with \"*\" or \"[\", as in dir: \"**/sandbox\""
	msg := err.Error()
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		p.errs = append(p.errs, fmt.Errorf("%s:%s: invalid YAML at or after this line: %s: %s", p.source, m[1], msg[len(m[0]):], fix))
		return
	}
	p.errs = append(p.errs, fmt.Errorf("%s: invalid YAML: %s: %s", p.source, strings.TrimPrefix(msg, "yaml: "), fix))
}

type mappingEntry struct {
	key     string
	keyNode *yaml.Node
	value   *yaml.Node
}

// entries lists a mapping's keys in file order, dropping (and reporting)
// repeated keys and keys that are not plain strings. Unknown keys are left to
// the caller, which knows which keys are known.
func (p *rulesParser) entries(mapping *yaml.Node, field, known string) []mappingEntry {
	firstLine := map[string]int{}
	var entries []mappingEntry
	for i := 0; i+1 < len(mapping.Content); i += 2 {
		keyNode, value := resolve(mapping.Content[i]), resolve(mapping.Content[i+1])
		if keyNode.Kind != yaml.ScalarNode {
			p.errorf(keyNode, field, "a key must be a name, found %s: known keys are %s", describe(keyNode), known)
			continue
		}
		key := keyNode.Value
		if line, seen := firstLine[key]; seen {
			p.errorf(keyNode, field, "duplicate key %q (first at line %d): keep one of them", key, line)
			continue
		}
		firstLine[key] = keyNode.Line
		entries = append(entries, mappingEntry{key: key, keyNode: keyNode, value: value})
	}
	return entries
}

func (p *rulesParser) agingStep(node *yaml.Node) (time.Duration, bool) {
	const example = "give a Go duration such as 30m or 1h"
	value, ok := p.scalar(node, "aging_step", example+", or remove the key for the default 1h")
	if !ok {
		return 0, false
	}
	step, err := time.ParseDuration(value)
	switch {
	case err != nil:
		p.errorf(node, "aging_step", "invalid duration %q: %s", value, example)
	case step <= 0:
		p.errorf(node, "aging_step", "%q is not positive: %s", value, example)
	case step > enhanced.MaxAgingStep:
		p.errorf(node, "aging_step", "%q is longer than the maximum %s: give a shorter step, such as 24h", value, enhanced.MaxAgingStep)
	default:
		return step, true
	}
	return 0, false
}

func (p *rulesParser) priority(node *yaml.Node, field string) (enhanced.Priority, bool) {
	value, ok := p.scalar(node, field, "use "+priorityNames)
	if !ok {
		return 0, false
	}
	priority, err := enhanced.ParsePriority(value)
	if err != nil {
		// ParsePriority's message already names the value and the choices.
		p.errorf(node, field, "%v", err)
		return 0, false
	}
	return priority, true
}

// scalar is node's text, or false after reporting that node is empty or not
// a single value; fix says what to write instead.
func (p *rulesParser) scalar(node *yaml.Node, field, fix string) (string, bool) {
	switch {
	case isNull(node):
		p.errorf(node, field, "no value: %s", fix)
	case node.Kind != yaml.ScalarNode:
		p.errorf(node, field, "expected a single value, found %s: %s", describe(node), fix)
	default:
		return node.Value, true
	}
	return "", false
}

func (p *rulesParser) rules(node *yaml.Node) []rule {
	if isNull(node) {
		return nil // "rules:" with every rule commented out
	}
	if node.Kind != yaml.SequenceNode {
		p.errorf(node, "rules", `expected a list of rules, each starting with "- ", found %s`, describe(node))
		return nil
	}
	var rules []rule
	for i, item := range node.Content {
		if r, ok := p.rule(resolve(item), fmt.Sprintf("rules[%d]", i)); ok {
			rules = append(rules, r)
		}
	}
	return rules
}

func (p *rulesParser) rule(node *yaml.Node, field string) (rule, bool) {
	if node.Kind != yaml.MappingNode {
		p.errorf(node, field, "expected a rule, a mapping with the keys %s; found %s", knownRuleKeys, describe(node))
		return rule{}, false
	}
	errsBefore := len(p.errs)
	var r rule
	hasPriority, hasPattern := false, false
	for _, entry := range p.entries(node, field, knownRuleKeys) {
		keyField := field + "." + entry.key
		if slot := r.patternSlot(entry.key); slot != nil {
			hasPattern = true
			*slot = p.pattern(entry.value, keyField, entry.key)
			continue
		}
		switch entry.key {
		case "priority":
			hasPriority = true
			r.priority, _ = p.priority(entry.value, keyField)
		default:
			// A misspelt pattern key is reported here, not as a missing pattern.
			hasPattern = true
			p.errorf(entry.keyNode, field, "unknown key %q: known keys are %s", entry.key, knownRuleKeys)
		}
	}
	if !hasPriority {
		p.errorf(node, field, "no priority: add priority: with one of %s", priorityNames)
	}
	if !hasPattern {
		p.errorf(node, field, "no pattern: add at least one of repo, dir, workspace, project or head_branch (for requests no rule matches, set default: instead)")
	}
	return r, len(p.errs) == errsBefore
}

// patternSlot is where the pattern of key goes, or nil if key is not a
// pattern key.
func (r *rule) patternSlot(key string) **glob {
	switch key {
	case "repo":
		return &r.repo
	case "dir":
		return &r.dir
	case "workspace":
		return &r.workspace
	case "project":
		return &r.project
	case "head_branch":
		return &r.headBranch
	}
	return nil
}

// patternExamples is, for each pattern key, a pattern of the kind it expects.
var patternExamples = map[string]string{
	"repo":        "acme/infra-*",
	"dir":         "prod/**",
	"workspace":   "default",
	"project":     "network-*",
	"head_branch": "hotfix/**",
}

// pattern compiles the glob of a rule's key, or reports why it cannot be one
// and returns nil.
func (p *rulesParser) pattern(node *yaml.Node, field, key string) *glob {
	value, ok := p.scalar(node, field, fmt.Sprintf("give a pattern such as %q, or remove the key to match any", patternExamples[key]))
	if !ok {
		return nil
	}
	if problem := unmatchable(key, value); problem != "" {
		p.errorf(node, field, "%q %s", value, problem)
		return nil
	}
	// GitHub and most other hosts treat repo names case-insensitively; git
	// branch names are case-sensitive.
	g, err := compileGlob(value, key == "repo")
	if err != nil {
		p.errorf(node, field, "%q: %v", value, err)
		return nil
	}
	return g
}

// unmatchable catches patterns that are valid globs but can never match
// what Classify compares them to, since those are mistakes, not intents.
func unmatchable(key, value string) string {
	switch {
	case value == "" && key != "project":
		// Only a project can be unnamed; repos, dirs and workspaces always
		// have a name ("." for the repo root).
		return "is empty and matches nothing: give a pattern, or remove the key to match any"
	case key != "dir":
		return ""
	case strings.HasPrefix(value, "/") || value == ".." || strings.HasPrefix(value, "../"):
		return `is outside the repo: dirs are relative to the repo root, as in "prod/network" ("." for the root itself)`
	case value != path.Clean(value):
		// Classify compares cleaned dirs, as upstream's NewProject writes them.
		return fmt.Sprintf(`is not a clean path: write %q (no "./", "..", "//" or trailing "/")`, path.Clean(value))
	}
	return ""
}

// resolve follows a YAML alias (*name) to the node it stands for.
func resolve(node *yaml.Node) *yaml.Node {
	for node.Kind == yaml.AliasNode && node.Alias != nil {
		node = node.Alias
	}
	return node
}

func isNull(node *yaml.Node) bool {
	return node.Kind == yaml.ScalarNode && node.Tag == "!!null"
}

// describe names a node's kind for "found ..." in messages.
func describe(node *yaml.Node) string {
	switch node.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if isNull(node) {
			return "nothing"
		}
		return fmt.Sprintf("the value %q", node.Value)
	default:
		return "something else"
	}
}
