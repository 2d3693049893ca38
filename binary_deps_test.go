package main

import (
	"errors"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"

	. "github.com/runatlantis/atlantis/testing"
)

const module = "github.com/atlantis-enhanced/atlantis"

// testDouble says whether a package is test-only: this module's end-to-end
// suites, testdrive and test helpers, upstream's test helpers, and the
// in-memory Redis with its Lua interpreter.
func testDouble(pkg string) bool {
	for _, root := range []string{module + "/e2e", module + "/testdrive", module + "/testing", "github.com/runatlantis/atlantis/testing"} {
		if pkg == root || strings.HasPrefix(pkg, root+"/") {
			return true
		}
	}
	return strings.HasPrefix(pkg, "github.com/alicebob/miniredis") || strings.HasPrefix(pkg, "github.com/yuin/gopher-lua")
}

func TestTestDouble(t *testing.T) {
	for _, c := range []struct {
		pkg  string
		want bool
	}{
		{module + "/e2e/vcssim", true},
		{module + "/e2e/e2ekit", true},
		{module + "/testdrive", true},
		{module + "/testdrive/cmd/atlantis-testdrive", true},
		{module + "/testing/testpki", true},
		{module + "/testing/redistest", true},
		{"github.com/runatlantis/atlantis/testing", true},
		{"github.com/alicebob/miniredis/v2", true},
		{"github.com/alicebob/miniredis/v2/server", true},
		{"github.com/yuin/gopher-lua/parse", true},
		{module + "/cmd", false},
		{module + "/server/core/locking/enhanced", false},
		// Upstream's ngrok testdrive ships in upstream's binary: its cmd
		// package, whose server command we run, links it.
		{"github.com/runatlantis/atlantis/testdrive", false},
		{"github.com/mitchellh/go-testing-interface", false},
		{module + "/testingx", false},
		{"testing", false},
	} {
		t.Run(c.pkg, func(t *testing.T) {
			Equals(t, c.want, testDouble(c.pkg))
		})
	}
}

// TestBinaryLinksNoTestDouble keeps the stand-ins the testdrive and the e2e
// suites run on out of the product: they belong in their own binaries.
func TestBinaryLinksNoTestDouble(t *testing.T) {
	out, err := exec.Command(goTool(), "list", "-deps", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, ".").Output() // nolint: gosec
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		t.Fatalf("go list -deps .: %s\n%s", err, ee.Stderr)
	}
	Ok(t, err)
	importers := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		for _, imp := range fields[1:] {
			importers[imp] = append(importers[imp], fields[0])
		}
	}
	// Only the doors are reported: a test-only package imported by a product
	// package, which is where the import must go.
	var doors []string
	for pkg, by := range importers {
		if !testDouble(pkg) {
			continue
		}
		var product []string
		for _, importer := range by {
			if !testDouble(importer) {
				product = append(product, importer)
			}
		}
		if len(product) > 0 {
			sort.Strings(product)
			doors = append(doors, pkg+" (imported by "+strings.Join(product, ", ")+")")
		}
	}
	sort.Strings(doors)
	Assert(t, len(doors) == 0, "the atlantis binary links test-only packages; import them from tests, the testdrive or e2e only:\n  %s", strings.Join(doors, "\n  "))
}

// goTool is the go command of the toolchain running the test.
func goTool() string {
	p := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := exec.LookPath(p); err == nil {
		return p
	}
	return "go"
}
