package monitoring

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	. "github.com/runatlantis/atlantis/testing"
	"go.yaml.in/yaml/v3"
)

const (
	rulesDir      = "prometheus"
	dashboardFile = "grafana/enhanced-locking-dashboard.json"
	// docsDir is where the runbook links' pages are, from this package.
	docsDir = "../runatlantis.io/docs"
	// docsBase is where the runbook links say the docs are served.
	docsBase = "https://www.runatlantis.io/docs/"
)

// promtool runs promtool with args in this package's directory and returns
// its output. A missing promtool fails the test: scripts/install-deps.sh
// (run by `make test`) installs it.
func promtool(t *testing.T, args ...string) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool not found on PATH (%v): run scripts/install-deps.sh or `apt-get install prometheus`; "+
			"the rule checks fail rather than skip", err)
	}
	out, err := exec.Command(path, args...).CombinedOutput()
	t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
	Ok(t, err)
	return string(out)
}

// ruleFiles are the alert rule files, and testFiles their promtool unit tests.
func ruleFiles(t *testing.T) (rules, tests []string) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(rulesDir, "*.yml"))
	Ok(t, err)
	for _, f := range files {
		if strings.HasSuffix(f, "_test.yml") {
			tests = append(tests, f)
		} else {
			rules = append(rules, f)
		}
	}
	Assert(t, len(rules) > 0 && len(tests) > 0, "no rule files or no rule tests in %s: %v", rulesDir, files)
	return rules, tests
}

func TestPromtoolCheckRules(t *testing.T) {
	rules, _ := ruleFiles(t)
	out := promtool(t, append([]string{"check", "rules"}, rules...)...)
	Assert(t, strings.Count(out, "SUCCESS") == len(rules), "promtool did not pass every rule file:\n%s", out)
}

func TestPromtoolTestRules(t *testing.T) {
	_, tests := ruleFiles(t)
	promtool(t, append([]string{"test", "rules"}, tests...)...)
}

// alertRule is what the rule files say of one alert.
type alertRule struct {
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func alertRules(t *testing.T) []alertRule {
	t.Helper()
	rules, _ := ruleFiles(t)
	var alerts []alertRule
	for _, f := range rules {
		data, err := os.ReadFile(f)
		Ok(t, err)
		var file struct {
			Groups []struct {
				Rules []alertRule `yaml:"rules"`
			} `yaml:"groups"`
		}
		Ok(t, yaml.Unmarshal(data, &file))
		for _, g := range file.Groups {
			alerts = append(alerts, g.Rules...)
		}
	}
	return alerts
}

// TestAlertsSayWhatToDo checks what an on-call engineer reads: a severity
// Alertmanager can route on, a pending period, a summary and a description,
// and a runbook link.
func TestAlertsSayWhatToDo(t *testing.T) {
	alerts := alertRules(t)
	Equals(t, 6, len(alerts))
	for _, a := range alerts {
		t.Run(a.Alert, func(t *testing.T) {
			Assert(t, a.Labels["severity"] == "critical" || a.Labels["severity"] == "warning",
				"severity %q, want critical or warning", a.Labels["severity"])
			Assert(t, a.For != "", "no for:")
			for _, key := range []string{"summary", "description", "runbook_url"} {
				Assert(t, strings.TrimSpace(a.Annotations[key]) != "", "no %s annotation", key)
			}
		})
	}
}

// headingSlug is the anchor the docs site gives a markdown heading: lower
// case, every run of other characters than letters and digits one hyphen,
// none at either end.
func headingSlug(heading string) string {
	return strings.Trim(regexp.MustCompile(`[^a-z0-9]+`).ReplaceAllString(strings.ToLower(heading), "-"), "-")
}

// anchors are the heading anchors of a markdown page.
func anchors(t *testing.T, page string) map[string]bool {
	t.Helper()
	data, err := os.ReadFile(page)
	Ok(t, err)
	found := map[string]bool{}
	inFence := false
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "```") {
			inFence = !inFence
		}
		if !inFence && strings.HasPrefix(line, "#") {
			found[headingSlug(strings.TrimLeft(line, "#"))] = true
		}
	}
	return found
}

// TestHeadingSlugMatchesTheDocsLinks checks headingSlug against anchors the
// docs already link to, headings with code, punctuation and brackets.
func TestHeadingSlugMatchesTheDocsLinks(t *testing.T) {
	for heading, slug := range map[string]string{
		"Health: `/healthz`": "health-healthz",
		"A pull request says `enhanced locking could not lock: redis is unreachable, so no lock was granted`": "a-pull-request-says-enhanced-locking-could-not-lock-redis-is-unreachable-so-no-lock-was-granted",
		"`/healthz` shows `legacy-fallback` while Redis is healthy":                                           "healthz-shows-legacy-fallback-while-redis-is-healthy",
		"The log says `conflict for <lock key>`":                                                              "the-log-says-conflict-for-lock-key",
		"Falling back to the legacy database (single replica only)":                                           "falling-back-to-the-legacy-database-single-replica-only",
	} {
		Equals(t, slug, headingSlug(heading))
	}
}

// TestRunbookLinksResolve checks that each runbook link names a page of
// runatlantis.io/docs and a heading on it.
func TestRunbookLinksResolve(t *testing.T) {
	for _, a := range alertRules(t) {
		link := a.Annotations["runbook_url"]
		Assert(t, strings.HasPrefix(link, docsBase), "%s: runbook %q is not under %s", a.Alert, link, docsBase)
		u, err := url.Parse(link)
		Ok(t, err)
		page := filepath.Join(docsDir, strings.TrimSuffix(strings.TrimPrefix(u.Path, "/docs/"), ".html")+".md")
		Assert(t, u.Fragment != "", "%s: runbook %q names no section", a.Alert, link)
		Assert(t, anchors(t, page)[u.Fragment], "%s: runbook %q: %s has no heading with anchor #%s", a.Alert, link, page, u.Fragment)
	}
}

// dashboard is the part of the Grafana dashboard model the tests read.
type dashboard struct {
	UID    string  `json:"uid"`
	Panels []panel `json:"panels"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	GridPos struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	Ok(t, err)
	var d dashboard
	Ok(t, json.Unmarshal(data, &d))
	Assert(t, d.UID != "" && len(d.Panels) > 0, "dashboard without uid or panels")
	return d
}

// TestDashboardPanels checks that every panel queries the dashboard's data
// source variable, has queries, and has a place of its own on the grid.
func TestDashboardPanels(t *testing.T) {
	d := readDashboard(t)
	ids := map[int]string{}
	var placed []panel
	for _, p := range d.Panels {
		Assert(t, ids[p.ID] == "", "panels %q and %q share id %d", ids[p.ID], p.Title, p.ID)
		ids[p.ID] = p.Title
		g := p.GridPos
		Assert(t, g.W > 0 && g.H > 0 && g.X >= 0 && g.X+g.W <= 24, "panel %q: gridPos %+v is off the 24-column grid", p.Title, g)
		for _, q := range placed {
			o := q.GridPos
			overlap := g.X < o.X+o.W && o.X < g.X+g.W && g.Y < o.Y+o.H && o.Y < g.Y+g.H
			Assert(t, !overlap, "panels %q and %q overlap", p.Title, q.Title)
		}
		placed = append(placed, p)
		if p.Type == "row" {
			continue
		}
		Assert(t, p.Datasource != nil && p.Datasource.UID == "${datasource}", "panel %q does not use the ${datasource} variable", p.Title)
		Assert(t, len(p.Targets) > 0, "panel %q has no query", p.Title)
		refs := map[string]bool{}
		for _, target := range p.Targets {
			Assert(t, strings.TrimSpace(target.Expr) != "", "panel %q: query %s is empty", p.Title, target.RefID)
			Assert(t, !refs[target.RefID], "panel %q: refId %s twice", p.Title, target.RefID)
			refs[target.RefID] = true
		}
	}
}

// filteredSeries is a series selector that keeps the dashboard's job and
// replica filters.
var filteredSeries = regexp.MustCompile(`atlantis_[a-z0-9_]+\{job=~"\$job", instance=~"\$instance"`)

// TestDashboardQueriesParse hands every dashboard query, its Grafana
// variables replaced by values, to promtool as a recording rule, so a query
// Prometheus cannot parse fails here rather than as an empty panel. Each
// series must also keep the job and replica filters.
func TestDashboardQueriesParse(t *testing.T) {
	d := readDashboard(t)
	vars := strings.NewReplacer("$__rate_interval", "2m", "$__range", "6h", "$job", ".*", "$instance", ".*")
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rules []rule
	for _, p := range d.Panels {
		for _, target := range p.Targets {
			uses := metricName.FindAllString(target.Expr, -1)
			filtered := filteredSeries.FindAllString(target.Expr, -1)
			Assert(t, len(uses) > 0 && len(uses) == len(filtered),
				"panel %q query %s: every series needs {job=~\"$job\", instance=~\"$instance\"}: %s", p.Title, target.RefID, target.Expr)
			rules = append(rules, rule{Record: fmt.Sprintf("dashboard:panel_%d_%s", p.ID, target.RefID), Expr: vars.Replace(target.Expr)})
		}
	}
	data, err := yaml.Marshal(map[string]any{"groups": []map[string]any{{"name": "dashboard-queries", "rules": rules}}})
	Ok(t, err)
	file := filepath.Join(t.TempDir(), "dashboard-queries.yml")
	Ok(t, os.WriteFile(file, data, 0o600))
	out := promtool(t, "check", "rules", file)
	Assert(t, strings.Contains(out, fmt.Sprintf("SUCCESS: %d rules found", len(rules))), "promtool did not parse every query:\n%s", out)
}

// TestMetricNames checks the extraction the server's scrape test relies on:
// names from the rules, their tests and the dashboard, a summary's _sum and
// _count as written.
func TestMetricNames(t *testing.T) {
	names, err := MetricNames()
	Ok(t, err)
	have := map[string]bool{}
	for _, n := range names {
		Assert(t, strings.HasPrefix(n, "atlantis_enhanced_"), "%s is not an enhanced locking series", n)
		have[n] = true
	}
	for _, want := range []string{
		"atlantis_enhanced_backend_health_status",                   // a rule
		"atlantis_enhanced_lock_acquisition_duration_seconds_count", // a rule, a summary's count
		"atlantis_enhanced_event_drops_total",                       // the dashboard only
		"atlantis_enhanced_redis_ping_latency",                      // the dashboard's quantiles
	} {
		Assert(t, have[want], "%s not among the names: %v", want, names)
	}
}

// docLink is a markdown link to a page of the docs folder or a section.
var docLink = regexp.MustCompile(`\]\(([a-z0-9-]*\.md)?(#[a-z0-9-]+)?\)`)

// TestMonitoringDocLinksResolve checks the links of the monitoring page into
// the docs: each page exists and has the heading its anchor names.
func TestMonitoringDocLinksResolve(t *testing.T) {
	const page = "enhanced-locking-monitoring.md"
	data, err := os.ReadFile(filepath.Join(docsDir, page))
	Ok(t, err)
	links := docLink.FindAllStringSubmatch(string(data), -1)
	Assert(t, len(links) > 0, "no links found in %s", page)
	for _, l := range links {
		target, anchor := l[1], strings.TrimPrefix(l[2], "#")
		if target == "" {
			target = page
		}
		found := anchors(t, filepath.Join(docsDir, target))
		Assert(t, anchor == "" || found[anchor], "%s links to %s#%s, which has no such heading", page, target, anchor)
	}
}
