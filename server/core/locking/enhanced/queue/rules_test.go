package queue_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/queue"
)

func mustParse(t *testing.T, data string) *queue.Rules {
	t.Helper()
	rules, err := queue.ParseRules([]byte(data), "priority-rules.yaml")
	Ok(t, err)
	return rules
}

// lockFor builds the lock the way upstream does, except that the path is
// left as given so that Classify's own normalisation is what is tested.
func lockFor(repo, dir, workspace, project string) models.ProjectLock {
	return models.ProjectLock{
		Project:   models.Project{RepoFullName: repo, Path: dir, ProjectName: project},
		Workspace: workspace,
	}
}

// onBranch is lock requested by a pull from head branch.
func onBranch(lock models.ProjectLock, branch string) models.ProjectLock {
	lock.Pull.HeadBranch = branch
	return lock
}

const orderedRules = `
default: low
rules:
  - repo: acme/infra
    dir: prod
    priority: critical
  - repo: acme/infra
    priority: high
  - workspace: staging
    priority: normal
  - project: network
    priority: critical
`

func TestClassify_FirstMatchWinsElseDefault(t *testing.T) {
	rules := mustParse(t, orderedRules)
	Equals(t, 4, rules.Len())
	cases := []struct {
		name string
		lock models.ProjectLock
		want enhanced.Priority
	}{
		{"first rule, every pattern matches", lockFor("acme/infra", "prod", "default", ""), enhanced.PriorityCritical},
		{"first rule misses on dir, second matches", lockFor("acme/infra", "staging", "default", ""), enhanced.PriorityHigh},
		{"second rule shadows the later workspace rule", lockFor("acme/infra", "dev", "staging", ""), enhanced.PriorityHigh},
		{"second rule shadows the later project rule", lockFor("acme/infra", "dev", "default", "network"), enhanced.PriorityHigh},
		{"workspace rule comes before the project rule", lockFor("acme/app", ".", "staging", "network"), enhanced.PriorityNormal},
		{"only the project rule matches", lockFor("acme/app", ".", "default", "network"), enhanced.PriorityCritical},
		{"no rule matches: the default", lockFor("acme/app", ".", "default", ""), enhanced.PriorityLow},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			Equals(t, c.want, rules.Classify(c.lock))
		})
	}
}

func TestClassify_EachFieldMatchesItsOwnPart(t *testing.T) {
	cases := []struct {
		field string
		lock  models.ProjectLock
	}{
		{"repo", onBranch(lockFor("x", "other", "other", "other"), "other")},
		{"dir", onBranch(lockFor("other", "x", "other", "other"), "other")},
		{"workspace", onBranch(lockFor("other", "other", "x", "other"), "other")},
		{"project", onBranch(lockFor("other", "other", "other", "x"), "other")},
		{"head_branch", onBranch(lockFor("other", "other", "other", "other"), "x")},
	}
	for _, c := range cases {
		t.Run(c.field, func(t *testing.T) {
			rules := mustParse(t, fmt.Sprintf("rules:\n  - %s: x\n    priority: high\n", c.field))
			Equals(t, enhanced.PriorityHigh, rules.Classify(c.lock))
			// Only that field: "x" in any other field does not match.
			for _, other := range cases {
				if other.field != c.field {
					Equals(t, enhanced.PriorityNormal, rules.Classify(other.lock))
				}
			}
		})
	}
}

// TestClassify_Globs pins the glob semantics: "*" and "?" stay within a
// segment, a "**" segment spans zero or more segments, classes and escapes
// work as in path.Match, and only the repo ignores case.
func TestClassify_Globs(t *testing.T) {
	cases := []struct {
		field, pattern, name string
		match                bool
	}{
		{"dir", "*", "prod", true},
		{"dir", "*", ".", true},
		{"dir", "*", "prod/network", false},
		{"dir", "prod/*", "prod/network", true},
		{"dir", "prod/*", "prod/network/vpc", false},
		{"dir", "prod/*", "prod", false},
		{"dir", "prod*", "production", true},
		{"dir", "prod*", "prod/network", false},
		{"dir", "prod/**", "prod", true},
		{"dir", "prod/**", "prod/network", true},
		{"dir", "prod/**", "prod/network/vpc", true},
		{"dir", "prod/**", "production", false},
		{"dir", "prod/**", "staging/prod", false},
		{"dir", "**/sandbox", "sandbox", true},
		{"dir", "**/sandbox", "teams/a/sandbox", true},
		{"dir", "**/sandbox", "sandbox/x", false},
		{"dir", "a/**/b", "a/b", true},
		{"dir", "a/**/b", "a/x/y/b", true},
		{"dir", "a/**/b", "a/x/c", false},
		{"dir", "a/**/**/b", "a/x/b", true},
		{"dir", "**/x/**", "a/x/b/c", true},
		{"dir", "**", ".", true},
		{"dir", "**", "a/b/c", true},
		{"dir", "env?", "env1", true},
		{"dir", "env?", "env", false},
		{"dir", "env?", "env12", false},
		{"dir", "a?b", "a/b", false},
		{"workspace", "prod-[ab]", "prod-a", true},
		{"workspace", "prod-[ab]", "prod-c", false},
		{"workspace", "prod-[^a]", "prod-b", true},
		{"workspace", "prod-[^a]", "prod-a", false},
		{"workspace", "v[0-9]", "v7", true},
		{"workspace", "v[0-9]", "vx", false},
		{"project", `net\*`, "net*", true},
		{"project", `net\*`, "network", false},
		{"project", `[*]`, "*", true},
		{"project", `\**`, "*net", true},
		{"project", `\**`, "net", false},
		// Upstream's project names may hold "/" (dir and workspace joined).
		{"project", "*", "a/b", false},
		{"project", "**", "a/b", true},
		// Paths are normalised as upstream's NewProject does.
		{"dir", ".", "", true},
		{"dir", ".", "/", true},
		{"dir", "prod", "prod/", true},
		{"dir", "prod", "./prod", true},
		{"dir", "prod/network", "prod//network", true},
		// A GitLab subgroup adds a segment to the repo name.
		{"repo", "acme/*", "acme/infra", true},
		{"repo", "acme/*", "acme/sub/infra", false},
		{"repo", "acme/**", "acme/sub/infra", true},
		// Repo names ignore case, as GitHub does; nothing else does.
		{"repo", "Acme/Infra-*", "acme/infra-live", true},
		{"repo", "acme/infra-*", "ACME/INFRA-LIVE", true},
		{"repo", "acme/[A-C]*", "acme/bravo", true},
		{"dir", "Prod", "prod", false},
		{"workspace", "Default", "default", false},
		{"project", "Network", "network", false},
		// An unnamed project has the name "".
		{"project", "", "", true},
		{"project", "", "network", false},
		{"project", "*", "", true},
		{"project", "?*", "", false},
		{"project", "?*", "network", true},
		// Head branches hold "/" and are case-sensitive, as in git.
		{"head_branch", "hotfix/*", "hotfix/vpc", true},
		{"head_branch", "hotfix/*", "hotfix/eu/vpc", false},
		{"head_branch", "hotfix/**", "hotfix/eu/vpc", true},
		{"head_branch", "hotfix/**", "hotfixes/vpc", false},
		{"head_branch", "hotfix/**", "Hotfix/vpc", false},
		{"head_branch", "release-*", "release-1.2", true},
		{"head_branch", "main", "main", true},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s %s on %s", c.field, c.pattern, c.name), func(t *testing.T) {
			rules := mustParse(t, fmt.Sprintf("rules:\n  - %s: '%s'\n    priority: high\n", c.field, c.pattern))
			lock := lockFor("acme/app", "app", "default", "app")
			switch c.field {
			case "repo":
				lock.Project.RepoFullName = c.name
			case "dir":
				lock.Project.Path = c.name
			case "workspace":
				lock.Workspace = c.name
			case "project":
				lock.Project.ProjectName = c.name
			case "head_branch":
				lock.Pull.HeadBranch = c.name
			}
			want := enhanced.PriorityNormal
			if c.match {
				want = enhanced.PriorityHigh
			}
			Equals(t, want, rules.Classify(lock))
		})
	}
}

func TestParseRules_ReadsEveryKey(t *testing.T) {
	rules := mustParse(t, `
aging_step: 90m
default: High
rules:
  - repo: acme/*
    dir: prod/**
    workspace: default
    project: network-*
    head_branch: renovate/**
    priority: LOW
`)
	Equals(t, 90*time.Minute, rules.AgingStep())
	Equals(t, 1, rules.Len())
	Equals(t, enhanced.PriorityLow, rules.Classify(onBranch(lockFor("acme/infra", "prod/eu", "default", "network-core"), "renovate/aws")))
	Equals(t, enhanced.PriorityHigh, rules.Classify(onBranch(lockFor("acme/infra", "prod/eu", "default", "network-core"), "feature/x")))
	Equals(t, enhanced.PriorityHigh, rules.Classify(onBranch(lockFor("acme/infra", "prod/eu", "default", "iam"), "renovate/aws")))
}

// TestParseRules_Aliases: a YAML anchor lets one pattern serve several rules.
func TestParseRules_Aliases(t *testing.T) {
	rules := mustParse(t, `
rules:
  - repo: &infra acme/infra-*
    dir: prod/**
    priority: critical
  - repo: *infra
    priority: high
`)
	Equals(t, enhanced.PriorityCritical, rules.Classify(lockFor("acme/infra-core", "prod/eu", "default", "")))
	Equals(t, enhanced.PriorityHigh, rules.Classify(lockFor("acme/infra-core", "staging", "default", "")))
	Equals(t, enhanced.PriorityNormal, rules.Classify(lockFor("acme/app", "staging", "default", "")))
}

func TestParseRules_EmptyFileMeansDefaults(t *testing.T) {
	cases := map[string]string{
		"empty":         "",
		"only comments": "# no rules yet\n# aging_step: 1h\n",
		"null document": "~\n",
		"empty rules":   "rules:\n# - repo: acme/*\n#   priority: high\n",
		"rules []":      "rules: []\n",
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			rules := mustParse(t, data)
			Equals(t, 0, rules.Len())
			Equals(t, time.Hour, rules.AgingStep())
			Equals(t, enhanced.PriorityNormal, rules.Classify(lockFor("acme/infra", "prod", "default", "network")))
		})
	}
}

func TestParseRules_AgingStepBounds(t *testing.T) {
	cases := []struct {
		value string
		want  time.Duration
		err   string
	}{
		{"1ns", time.Nanosecond, ""},
		{"15m", 15 * time.Minute, ""},
		{enhanced.MaxAgingStep.String(), enhanced.MaxAgingStep, ""},
		{(enhanced.MaxAgingStep + time.Nanosecond).String(), 0,
			`priority-rules.yaml:1: aging_step: "87600h0m0.000000001s" is longer than the maximum 87600h0m0s: give a shorter step, such as 24h`},
		{"0s", 0, `priority-rules.yaml:1: aging_step: "0s" is not positive: give a Go duration such as 30m or 1h`},
		{"0", 0, `priority-rules.yaml:1: aging_step: "0" is not positive: give a Go duration such as 30m or 1h`},
		{"-1h", 0, `priority-rules.yaml:1: aging_step: "-1h" is not positive: give a Go duration such as 30m or 1h`},
	}
	for _, c := range cases {
		t.Run(c.value, func(t *testing.T) {
			rules, err := queue.ParseRules([]byte("aging_step: "+c.value+"\n"), "priority-rules.yaml")
			if c.err != "" {
				ErrEquals(t, c.err, err)
				return
			}
			Ok(t, err)
			Equals(t, c.want, rules.AgingStep())
		})
	}
}

const yamlFix = "check the indentation (spaces, not tabs), brackets and quotes, and quote patterns that start with \"*\" or \"[\", as in dir: \"**/sandbox\""

// TestParseRules_Errors pins each kind of problem with its line: the message
// is what an operator reads at startup, so its wording is the contract.
func TestParseRules_Errors(t *testing.T) {
	cases := []struct {
		name, data, err string
	}{
		// The parser's line is where the construct around the mistake starts.
		{"YAML syntax", "rules:\n  - repo: [acme\n", `priority-rules.yaml:1: invalid YAML at or after this line: did not find expected ',' or ']': ` + yamlFix},
		{"bad indentation", "rules:\n  - repo: a\n    priority: high\n  - dir: x\n  priority: low\n",
			`priority-rules.yaml:1: invalid YAML at or after this line: did not find expected '-' indicator: ` + yamlFix},
		{"tab indentation", "rules:\n\t- repo: acme\n", `priority-rules.yaml:2: invalid YAML at or after this line: found character that cannot start any token: ` + yamlFix},
		{"unquoted pattern starting with *", "rules:\n  - dir: **/sandbox\n    priority: low\n",
			`priority-rules.yaml:2: invalid YAML at or after this line: did not find expected alphabetic or numeric character: ` + yamlFix},
		{"no line from the parser", "default: *nope\n", `priority-rules.yaml: invalid YAML: unknown anchor 'nope' referenced: ` + yamlFix},
		{"second document", "default: high\n---\ndefault: low\n", `priority-rules.yaml:2: a second YAML document: keep the rules in one document, without "---"`},
		{"file is a list", "- repo: acme/*\n  priority: high\n",
			`priority-rules.yaml:1: the file must be a mapping with the keys aging_step, default, rules; found a list`},
		{"file is a word", "critical\n",
			`priority-rules.yaml:1: the file must be a mapping with the keys aging_step, default, rules; found the value "critical"`},
		{"unknown top key", "default: high\nrule:\n  - repo: a\n",
			`priority-rules.yaml:2: unknown key "rule": known keys are aging_step, default, rules`},
		{"duplicate top key", "default: high\naging_step: 1h\ndefault: low\n",
			`priority-rules.yaml:3: duplicate key "default" (first at line 1): keep one of them`},
		{"key not a name", "[a, b]: high\n",
			`priority-rules.yaml:1: a key must be a name, found a list: known keys are aging_step, default, rules`},
		{"aging_step not a duration", "aging_step: 1hour\n",
			`priority-rules.yaml:1: aging_step: invalid duration "1hour": give a Go duration such as 30m or 1h`},
		{"aging_step without unit", "aging_step: 3600\n",
			`priority-rules.yaml:1: aging_step: invalid duration "3600": give a Go duration such as 30m or 1h`},
		{"aging_step empty", "aging_step:\n",
			`priority-rules.yaml:1: aging_step: no value: give a Go duration such as 30m or 1h, or remove the key for the default 1h`},
		{"aging_step a mapping", "aging_step:\n  hours: 1\n",
			`priority-rules.yaml:2: aging_step: expected a single value, found a mapping: give a Go duration such as 30m or 1h, or remove the key for the default 1h`},
		{"default unknown", "aging_step: 1h\ndefault: urgent\n",
			`priority-rules.yaml:2: default: unknown priority "urgent": use critical, high, normal or low`},
		{"default empty", "default:\n",
			`priority-rules.yaml:1: default: no value: use critical, high, normal or low`},
		{"rules a mapping", "rules:\n  repo: acme/*\n  priority: high\n",
			`priority-rules.yaml:2: rules: expected a list of rules, each starting with "- ", found a mapping`},
		{"rules a word", "rules: all\n",
			`priority-rules.yaml:1: rules: expected a list of rules, each starting with "- ", found the value "all"`},
		{"rule a word", "rules:\n  - repo: a\n    priority: high\n  - acme/*\n",
			`priority-rules.yaml:4: rules[1]: expected a rule, a mapping with the keys repo, dir, workspace, project, head_branch, priority; found the value "acme/*"`},
		{"rule empty", "rules:\n  -\n",
			`priority-rules.yaml:2: rules[0]: expected a rule, a mapping with the keys repo, dir, workspace, project, head_branch, priority; found nothing`},
		{"rule a list", "rules:\n  - - repo: a\n",
			`priority-rules.yaml:2: rules[0]: expected a rule, a mapping with the keys repo, dir, workspace, project, head_branch, priority; found a list`},
		{"unknown rule key", "rules:\n  - repo: a\n    workpace: default\n    priority: high\n",
			`priority-rules.yaml:3: rules[0]: unknown key "workpace": known keys are repo, dir, workspace, project, head_branch, priority`},
		{"duplicate rule key", "rules:\n  - repo: a\n    dir: prod\n    repo: b\n    priority: high\n",
			`priority-rules.yaml:4: rules[0]: duplicate key "repo" (first at line 2): keep one of them`},
		{"no priority", "rules:\n  - repo: a\n    priority: high\n  - repo: b\n    dir: prod\n",
			`priority-rules.yaml:4: rules[1]: no priority: add priority: with one of critical, high, normal or low`},
		{"unknown priority", "rules:\n  - repo: a\n    priority: high\n  - repo: b\n    priority: urgent\n",
			`priority-rules.yaml:5: rules[1].priority: unknown priority "urgent": use critical, high, normal or low`},
		{"priority a list", "rules:\n  - repo: a\n    priority: [high]\n",
			`priority-rules.yaml:3: rules[0].priority: expected a single value, found a list: use critical, high, normal or low`},
		{"no pattern", "rules:\n  - priority: high\n",
			`priority-rules.yaml:2: rules[0]: no pattern: add at least one of repo, dir, workspace, project or head_branch (for requests no rule matches, set default: instead)`},
		{"unclosed class", "rules:\n  - dir: 'prod/[ab'\n    priority: high\n",
			`priority-rules.yaml:2: rules[0].dir: "prod/[ab": malformed pattern near "[ab": close every "[" with "]", and write a literal "[", "*", "?" or "\" as "\[", "\*", "\?" or "\\"`},
		{"trailing backslash", "rules:\n  - project: 'net\\'\n    priority: high\n",
			`priority-rules.yaml:2: rules[0].project: "net\\": malformed pattern near "net\\": close every "[" with "]", and write a literal "[", "*", "?" or "\" as "\[", "\*", "\?" or "\\"`},
		{"** inside a segment", "rules:\n  - dir: 'prod**'\n    priority: high\n",
			`priority-rules.yaml:2: rules[0].dir: "prod**": "**" must be a whole path segment, as in "prod/**" or "**/network": use "*" to match within one segment`},
		{"*** segment", "rules:\n  - repo: 'acme/***'\n    priority: high\n",
			`priority-rules.yaml:2: rules[0].repo: "acme/***": "**" must be a whole path segment, as in "prod/**" or "**/network": use "*" to match within one segment`},
		{"empty repo", "rules:\n  - repo: ''\n    priority: high\n",
			`priority-rules.yaml:2: rules[0].repo: "" is empty and matches nothing: give a pattern, or remove the key to match any`},
		{"empty dir", "rules:\n  - dir: \"\"\n    priority: high\n",
			`priority-rules.yaml:2: rules[0].dir: "" is empty and matches nothing: give a pattern, or remove the key to match any`},
		{"empty workspace", "rules:\n  - workspace: ''\n    priority: high\n",
			`priority-rules.yaml:2: rules[0].workspace: "" is empty and matches nothing: give a pattern, or remove the key to match any`},
		{"absolute dir", "rules:\n  - dir: /prod\n    priority: high\n",
			`priority-rules.yaml:2: rules[0].dir: "/prod" is outside the repo: dirs are relative to the repo root, as in "prod/network" ("." for the root itself)`},
		{"dir above the repo", "rules:\n  - dir: ../shared\n    priority: high\n",
			`priority-rules.yaml:2: rules[0].dir: "../shared" is outside the repo: dirs are relative to the repo root, as in "prod/network" ("." for the root itself)`},
		{"dir with ./", "rules:\n  - dir: ./prod\n    priority: high\n",
			`priority-rules.yaml:2: rules[0].dir: "./prod" is not a clean path: write "prod" (no "./", "..", "//" or trailing "/")`},
		{"dir with trailing /", "rules:\n  - dir: prod/**/\n    priority: high\n",
			`priority-rules.yaml:2: rules[0].dir: "prod/**/" is not a clean path: write "prod/**" (no "./", "..", "//" or trailing "/")`},
		{"dir with //", "rules:\n  - dir: prod//network\n    priority: high\n",
			`priority-rules.yaml:2: rules[0].dir: "prod//network" is not a clean path: write "prod/network" (no "./", "..", "//" or trailing "/")`},
		{"pattern without value", "rules:\n  - repo:\n    priority: high\n",
			`priority-rules.yaml:2: rules[0].repo: no value: give a pattern such as "acme/infra-*", or remove the key to match any`},
		{"empty head_branch", "rules:\n  - head_branch: ''\n    priority: high\n",
			`priority-rules.yaml:2: rules[0].head_branch: "" is empty and matches nothing: give a pattern, or remove the key to match any`},
		{"head_branch without value", "rules:\n  - head_branch:\n    priority: critical\n",
			`priority-rules.yaml:2: rules[0].head_branch: no value: give a pattern such as "hotfix/**", or remove the key to match any`},
		{"pattern a list", "rules:\n  - dir: [prod, staging]\n    priority: high\n",
			`priority-rules.yaml:2: rules[0].dir: expected a single value, found a list: give a pattern such as "prod/**", or remove the key to match any`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rules, err := queue.ParseRules([]byte(c.data), "priority-rules.yaml")
			ErrEquals(t, c.err, err)
			Assert(t, rules == nil, "rules must be nil with an error, got %d rules", rules.Len())
		})
	}
}

func TestParseRules_ReportsEveryErrorAtOnce(t *testing.T) {
	data := `aging_step: 0s
default: urgent
colour: blue
rules:
  - repo: acme/*
    workpace: default
    priority: high
  - dir: prod
  - dir: '[prod'
    priority: urgent
  - staging
  - priority: low
`
	_, err := queue.ParseRules([]byte(data), "priority-rules.yaml")
	Assert(t, err != nil, "expected errors")
	Equals(t, []string{
		`priority-rules.yaml:1: aging_step: "0s" is not positive: give a Go duration such as 30m or 1h`,
		`priority-rules.yaml:2: default: unknown priority "urgent": use critical, high, normal or low`,
		`priority-rules.yaml:3: unknown key "colour": known keys are aging_step, default, rules`,
		`priority-rules.yaml:6: rules[0]: unknown key "workpace": known keys are repo, dir, workspace, project, head_branch, priority`,
		`priority-rules.yaml:8: rules[1]: no priority: add priority: with one of critical, high, normal or low`,
		`priority-rules.yaml:9: rules[2].dir: "[prod": malformed pattern near "[prod": close every "[" with "]", and write a literal "[", "*", "?" or "\" as "\[", "\*", "\?" or "\\"`,
		`priority-rules.yaml:10: rules[2].priority: unknown priority "urgent": use critical, high, normal or low`,
		`priority-rules.yaml:11: rules[3]: expected a rule, a mapping with the keys repo, dir, workspace, project, head_branch, priority; found the value "staging"`,
		`priority-rules.yaml:12: rules[4]: no pattern: add at least one of repo, dir, workspace, project or head_branch (for requests no rule matches, set default: instead)`,
	}, strings.Split(err.Error(), "\n"))
}

func TestLoadRules_Example(t *testing.T) {
	rules, err := queue.LoadRules(filepath.Join("testdata", "priority-rules.yaml"))
	Ok(t, err)
	Equals(t, 7, rules.Len())
	Equals(t, 2*time.Hour, rules.AgingStep())
	cases := []struct {
		lock models.ProjectLock
		want enhanced.Priority
	}{
		{lockFor("acme/infra-core", "prod/eu-west-1", "default", "network-vpc"), enhanced.PriorityCritical},
		{lockFor("Acme/Infra-Core", "prod/eu-west-1", "default", "iam"), enhanced.PriorityCritical},
		{lockFor("acme/infra-core", "prod/eu-west-1", "default", ""), enhanced.PriorityHigh},
		{lockFor("acme/infra-core", "prod", "default", "network-vpc"), enhanced.PriorityCritical},
		{lockFor("acme/platform-modules", ".", "default", ""), enhanced.PriorityHigh},
		{lockFor("acme/app", ".", "dev-alice", ""), enhanced.PriorityLow},
		{lockFor("acme/app", "teams/payments/sandbox", "default", ""), enhanced.PriorityLow},
		{lockFor("acme/infra-core", "staging/eu-west-1", "default", "network-vpc"), enhanced.PriorityNormal},
		{onBranch(lockFor("acme/app", "teams/payments/sandbox", "dev-alice", ""), "hotfix/login"), enhanced.PriorityCritical},
	}
	for _, c := range cases {
		Equals(t, c.want, rules.Classify(c.lock))
	}
}

func TestLoadRules_NoPathMeansDefaults(t *testing.T) {
	rules, err := queue.LoadRules("")
	Ok(t, err)
	Equals(t, queue.DefaultRules(), rules)
}

func TestLoadRules_ErrorsNameThePath(t *testing.T) {
	dir := t.TempDir()

	missing := filepath.Join(dir, "missing.yaml")
	_, err := queue.LoadRules(missing)
	ErrContains(t, missing, err)
	ErrContains(t, "check the --enhanced-locking-priority-rules path", err)
	Assert(t, errors.Is(err, fs.ErrNotExist), "the read error is wrapped, got %v", err)

	invalid := filepath.Join(dir, "rules.yaml")
	Ok(t, os.WriteFile(invalid, []byte("rules:\n  - repo: a\n    priority: urgent\n"), 0o600))
	_, err = queue.LoadRules(invalid)
	ErrEquals(t, invalid+`:3: rules[0].priority: unknown priority "urgent": use critical, high, normal or low`, err)
}

func TestRules_Headstart(t *testing.T) {
	rules := mustParse(t, "aging_step: 30m\n")
	cases := []struct {
		priority enhanced.Priority
		want     time.Duration
	}{
		{enhanced.PriorityCritical, enhanced.PriorityCritical.Headstart(30 * time.Minute)},
		{enhanced.PriorityHigh, 30 * time.Minute},
		{enhanced.PriorityNormal, 0},
		{enhanced.PriorityLow, -30 * time.Minute},
	}
	for _, c := range cases {
		t.Run(c.priority.String(), func(t *testing.T) {
			Equals(t, c.want, rules.Headstart(c.priority))
		})
	}
	// Critical is ahead of a high request that has waited the longest step.
	Assert(t, rules.Headstart(enhanced.PriorityCritical) > enhanced.PriorityHigh.Headstart(enhanced.MaxAgingStep)+enhanced.MaxAgingStep,
		"critical headstart %s is not ahead of every other level", rules.Headstart(enhanced.PriorityCritical))
}

func TestDefaultRules_AndTheZeroValue(t *testing.T) {
	var nilRules *queue.Rules
	for name, rules := range map[string]*queue.Rules{"DefaultRules": queue.DefaultRules(), "zero": {}, "nil": nilRules} {
		t.Run(name, func(t *testing.T) {
			Equals(t, 0, rules.Len())
			Equals(t, queue.DefaultAgingStep, rules.AgingStep())
			Equals(t, time.Hour, rules.Headstart(enhanced.PriorityHigh))
			Equals(t, enhanced.PriorityNormal, rules.Classify(lockFor("acme/infra", "prod", "default", "network")))
		})
	}
}

// TestClassify_Concurrent runs under -race: Rules is shared by every request
// handler, so Classify must only read.
func TestClassify_Concurrent(t *testing.T) {
	rules, err := queue.LoadRules(filepath.Join("testdata", "priority-rules.yaml"))
	Ok(t, err)
	locks := []models.ProjectLock{
		lockFor("acme/infra-core", "prod/eu", "default", "network-vpc"),
		lockFor("acme/infra-core", "prod/eu", "default", ""),
		lockFor("acme/app", ".", "dev-bob", ""),
		lockFor("acme/app", ".", "default", ""),
	}
	want := []enhanced.Priority{enhanced.PriorityCritical, enhanced.PriorityHigh, enhanced.PriorityLow, enhanced.PriorityNormal}

	const goroutines, rounds = 32, 500
	wrong := make(chan string, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				n := (g + i) % len(locks)
				if got := rules.Classify(locks[n]); got != want[n] {
					wrong <- fmt.Sprintf("lock %d: got %s, want %s", n, got, want[n])
					return
				}
			}
		}()
	}
	wg.Wait()
	close(wrong)
	for msg := range wrong {
		t.Error(msg)
	}
}

// deepBranch is a head branch of n "a" segments and then last, and
// manyStars a pattern of stars "**" segments, each followed by "a", then
// "b": a pull chooses its branch name, the operator the pattern.
func deepBranch(n int, last string) string { return strings.Repeat("a/", n) + last }

func manyStars(stars int) string { return strings.Repeat("**/a/", stars) + "b" }

// TestClassify_DeepNameAgainstManyDoubleStars: matching a name against a
// pattern of many "**" must not try every way of splitting the name among
// them. That is 200^12 tries here: before the fix this test never ended.
func TestClassify_DeepNameAgainstManyDoubleStars(t *testing.T) {
	rules := mustParse(t, "rules:\n  - head_branch: \""+manyStars(12)+"\"\n    priority: critical\n")
	Equals(t, enhanced.PriorityCritical, rules.Classify(onBranch(lockFor("r", ".", "default", ""), deepBranch(200, "b"))))
	Equals(t, enhanced.PriorityNormal, rules.Classify(onBranch(lockFor("r", ".", "default", ""), deepBranch(200, "c"))))
	Equals(t, enhanced.PriorityNormal, rules.Classify(onBranch(lockFor("r", ".", "default", ""), deepBranch(11, "b"))))
}

// BenchmarkClassify_DeepName is Classify of a head branch of 200 segments
// that no rule matches, against a rule of 12 "**" segments: the worst a pull
// can make a request's classification cost.
func BenchmarkClassify_DeepName(b *testing.B) {
	rules, err := queue.ParseRules([]byte("rules:\n  - head_branch: \""+manyStars(12)+"\"\n    priority: critical\n"), "bench.yaml")
	Ok(b, err)
	lock := onBranch(lockFor("r", ".", "default", ""), deepBranch(200, "c"))
	for b.Loop() {
		rules.Classify(lock)
	}
}
