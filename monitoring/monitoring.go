// Package monitoring holds what operators install to watch enhanced locking:
// the Prometheus alert rules (prometheus/) and the Grafana dashboard
// (grafana/). The files are embedded so that a test elsewhere, the server's
// scrape test, reads exactly the files operators install.
package monitoring

import (
	"embed"
	"fmt"
	"io/fs"
	"regexp"
	"sort"
)

// Files are the rule files, their promtool unit tests and the dashboard.
//
//go:embed prometheus/*.yml grafana/*.json
var Files embed.FS

// metricName matches the server's series names in PromQL, JSON and YAML
// alike. Every series the server exports starts with upstream's default stats
// namespace; nothing else in these files is spelt atlantis_ (rule groups,
// alert names, links and the dashboard's uid use other spellings), so a
// match is always a series name.
var metricName = regexp.MustCompile(`atlantis_[a-z0-9_]+`)

// MetricNames returns every series name the rules, their unit tests and the
// dashboard use, sorted, each once: the names a scrape of the server must
// show. A summary's name stands for its quantile series; its _sum and _count
// appear as written.
func MetricNames() ([]string, error) {
	seen := map[string]bool{}
	err := fs.WalkDir(Files, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := Files.ReadFile(path)
		if err != nil {
			return fmt.Errorf("reading %s: %w", path, err)
		}
		for _, name := range metricName.FindAllString(string(data), -1) {
			seen[name] = true
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(seen))
	for name := range seen {
		names = append(names, name)
	}
	sort.Strings(names)
	return names, nil
}
