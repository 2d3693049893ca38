package queue_test

import (
	"fmt"
	"os"
	"path"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"
	"go.yaml.in/yaml/v3"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/queue"
)

// patternKeys are a rule's pattern keys, which FuzzParseRules picks from.
var patternKeys = []string{"repo", "dir", "workspace", "project", "head_branch"}

// FuzzParseRules feeds the rules parser arbitrary files, and files with one
// rule whose pattern, aging step and default are arbitrary, and checks:
//   - parsing never panics and gives the same answer twice; every line of an
//     error starts with the file's name, as "file[:line]: ...";
//   - a bad pattern, aging step or default is refused with an error that
//     names its field (rules[0].dir, aging_step, default) and quotes it;
//   - a good aging step is the one the file gives;
//   - a rule that parses matches a name exactly when an independent matcher
//     says its glob does (a regular expression built from the pattern, or
//     path.Match for character classes within one segment).
func FuzzParseRules(f *testing.F) {
	example, err := os.ReadFile("testdata/priority-rules.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example, uint8(0), "acme/infra-*", "acme/infra-prod", "2h", "low")
	f.Add([]byte(orderedRules), uint8(1), "prod/**", "prod/network/vpc", "1h", "normal")
	f.Add([]byte("rules:\n  - repo: [acme\n"), uint8(1), "**/sandbox", "sandbox", "30m", "high")
	f.Add([]byte("default: *nope\n"), uint8(1), "a/**/b", "a/x/y/b", "0s", "urgent")
	f.Add([]byte("a: &x [*x]\n"), uint8(2), "dev-?", "dev-1", "-1h", "")
	f.Add([]byte("default: high\n---\ndefault: low\n"), uint8(3), "", "", "1hour", "critical")
	f.Add([]byte("rules:\n  - {repo: a, priority: high}\n  - *r\n"), uint8(4), "hotfix/[a-c]*", "hotfix/b1", "3600", "HIGH")
	f.Add([]byte("\xff\xfe"), uint8(0), "ACME/[^x]?", "acme/yz", "24h", "low")
	f.Add([]byte("rules:\n- !!binary aGk=: x\n"), uint8(1), "./x", "x", "2562047h", "low")
	f.Add([]byte("aging_step: 1h\nrules: ~\n"), uint8(1), "a**", "ab", "1ns", "low")
	f.Add([]byte("rules:\n  - dir: \"\\\\\"\n    priority: low\n"), uint8(2), "\\*", "*", "1h", "low")
	f.Add([]byte("rules:\n  - dir: prod\n    priority: low\n"), uint8(1), "a/\\/b", "a//b", "1h", "low")

	f.Fuzz(func(t *testing.T, data []byte, key uint8, pattern, name, agingStep, fallback string) {
		checkRulesFile(t, data)

		field := patternKeys[int(key)%len(patternKeys)]
		file, ok := oneRuleFile(field, pattern, agingStep, fallback)
		if !ok {
			return // not text a YAML file can hold as it is
		}
		rules, err := queue.ParseRules(file, "priority-rules.yaml")
		checkRulesFile(t, file)
		if err != nil {
			named := false
			for _, named1 := range []string{
				fmt.Sprintf("rules[0].%s: %q", field, pattern),
				fmt.Sprintf("aging_step: %q", agingStep),
				fmt.Sprintf("aging_step: invalid duration %q", agingStep),
				fmt.Sprintf("default: unknown priority %q", fallback),
			} {
				named = named || strings.Contains(err.Error(), named1)
			}
			Assert(t, named, "the error does not name the bad value's field and quote it:\n%s\n--- file ---\n%s", err, file)
			return
		}
		step, err := time.ParseDuration(agingStep)
		Ok(t, err)
		Equals(t, step, rules.AgingStep())

		fallbackPriority, _ := enhanced.ParsePriority(fallback)
		for _, name := range append(instances(pattern), name) {
			match, known := globOracle(field, pattern, name)
			if !known {
				continue
			}
			want := fallbackPriority
			if match {
				want = enhanced.PriorityCritical
			}
			Assert(t, rules.Classify(lockWith(field, name)) == want,
				"%s: %q matching %q: want match=%v\n--- file ---\n%s", field, pattern, name, match, file)
		}
	})
}

// instances are names a pattern is likely to match, so that the fuzzer
// need not guess them: each "**" segment dropped or made one or two
// segments, each "*" empty or one or two letters, each "?" one letter.
func instances(pattern string) []string {
	var names []string
	for _, n := range []int{0, 1, 2} {
		var segments []string
		for segment := range strings.SplitSeq(pattern, "/") {
			if segment == "**" {
				if n > 0 {
					segments = append(segments, strings.Repeat("x/", n-1)+"x")
				}
				continue
			}
			r := strings.NewReplacer("\\*", "*", "\\?", "?", "\\\\", "\\", "*", strings.Repeat("z", n), "?", "q")
			segments = append(segments, r.Replace(segment))
		}
		names = append(names, strings.Join(segments, "/"))
	}
	return names
}

// checkRulesFile parses data twice: same answer, and every error line
// names the file.
func checkRulesFile(t *testing.T, data []byte) {
	t.Helper()
	first, err1 := queue.ParseRules(data, "priority-rules.yaml")
	second, err2 := queue.ParseRules(data, "priority-rules.yaml")
	Assert(t, reflect.DeepEqual(first, second), "two parses of one file differ")
	Equals(t, fmt.Sprint(err1), fmt.Sprint(err2))
	if err1 == nil {
		return
	}
	for line := range strings.SplitSeq(err1.Error(), "\n") {
		Assert(t, strings.HasPrefix(line, "priority-rules.yaml:") || strings.HasPrefix(line, "priority-rules.yaml "),
			"an error line does not start with the file's name: %q", line)
	}
}

// oneRuleFile is a rules file with one rule, pattern under field, priority
// critical; false if a value is not valid UTF-8, which no YAML file holds.
func oneRuleFile(field, pattern, agingStep, fallback string) ([]byte, bool) {
	for _, s := range []string{pattern, agingStep, fallback} {
		if !utf8.ValidString(s) {
			return nil, false
		}
	}
	quoted := func(s string) *yaml.Node {
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Style: yaml.DoubleQuotedStyle, Value: s}
	}
	rule := &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{
		quoted(field), quoted(pattern), quoted("priority"), quoted("critical"),
	}}
	doc := &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{
		quoted("aging_step"), quoted(agingStep),
		quoted("default"), quoted(fallback),
		quoted("rules"), {Kind: yaml.SequenceNode, Content: []*yaml.Node{rule}},
	}}
	out, err := yaml.Marshal(doc)
	return out, err == nil
}

// lockWith is a lock whose field is name. The rule has no other pattern,
// so the other names do not matter.
func lockWith(field, name string) models.ProjectLock {
	var lock models.ProjectLock
	switch field {
	case "repo":
		lock.Project.RepoFullName = name
	case "dir":
		lock.Project.Path = name
	case "workspace":
		lock.Workspace = name
	case "project":
		lock.Project.ProjectName = name
	case "head_branch":
		lock.Pull.HeadBranch = name
	}
	return lock
}

// globOracle says whether the rule glob pattern of field matches name,
// computed apart from the glob code; known is false where it cannot say.
func globOracle(field, pattern, name string) (match, known bool) {
	if !utf8.ValidString(name) {
		return false, false
	}
	if field == "repo" {
		pattern, name = strings.ToLower(pattern), strings.ToLower(name)
	}
	if field == "dir" {
		name = models.NewProject("r", name, "").Path
	}
	if strings.Contains(pattern, "[") {
		// A class matches within one segment, which path.Match agrees
		// with when neither side has a "/" nor a "**".
		if strings.Contains(pattern, "/") || strings.Contains(name, "/") || strings.Contains(pattern, "**") {
			return false, false
		}
		ok, err := path.Match(pattern, name)
		return ok, err == nil
	}
	re, ok := globRegexp(pattern)
	if !ok {
		return false, false
	}
	return re.MatchString("/" + name), true
}

// globRegexp translates a glob without classes into a regular expression
// over "/" + name: each segment becomes "/" and its text, and a "**" segment
// any number of whole segments.
func globRegexp(pattern string) (*regexp.Regexp, bool) {
	var b strings.Builder
	b.WriteString("^")
	for segment := range strings.SplitSeq(pattern, "/") {
		if segment == "**" {
			b.WriteString("(?:/[^/]*)*")
			continue
		}
		b.WriteString("/")
		for i := 0; i < len(segment); i++ {
			switch c := segment[i]; c {
			case '*':
				b.WriteString("[^/]*")
			case '?':
				b.WriteString("[^/]")
			case '\\':
				if i+1 == len(segment) {
					return nil, false
				}
				i++
				fallthrough
			default:
				_, n := utf8.DecodeRuneInString(segment[i:])
				b.WriteString(regexp.QuoteMeta(segment[i : i+n]))
				i += n - 1
			}
		}
	}
	b.WriteString("$")
	re, err := regexp.Compile(b.String())
	return re, err == nil
}
