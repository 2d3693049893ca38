// Package e2ekit is what the end-to-end suites (e2e and e2e/chaos) share: the
// binaries they run, and a workflow whose steps record when each command ran
// and can stall on demand, with the checks over what it recorded.
package e2ekit

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/atlantis-enhanced/atlantis/testdrive"
)

// Binaries are the programs a suite's replicas run.
type Binaries struct {
	// Atlantis is the atlantis binary built from this module.
	Atlantis string
	// TerraformDir holds the terraform binary the replicas run.
	TerraformDir string
}

// Build compiles this module's atlantis binary into dir and finds terraform
// (see testdrive.FindTerraform) and redis-server. A missing one is an error:
// the suites fail rather than skip.
func Build(dir string) (Binaries, error) {
	wd, err := os.Getwd()
	if err != nil {
		return Binaries{}, err
	}
	tfDir, err := testdrive.FindTerraform(wd)
	if err != nil {
		return Binaries{}, err
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		return Binaries{}, fmt.Errorf("redis-server not found (install the Debian package redis-server, or run ./scripts/install-deps.sh): %w", err)
	}
	bin := filepath.Join(dir, "atlantis")
	build := exec.Command(goTool(), "build", "-o", bin, "github.com/atlantis-enhanced/atlantis") // nolint: gosec
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return Binaries{}, fmt.Errorf("building atlantis: %w", err)
	}
	return Binaries{Atlantis: bin, TerraformDir: tfDir}, nil
}

// goTool is the go command of the toolchain running the tests.
func goTool() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	return "go"
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// Main is a suite's TestMain: it builds the binaries into a temporary
// directory, hands them to use and runs the tests, returning the exit code.
// Under -short it only runs the tests, which skip themselves.
func Main(m *testing.M, suite string, use func(Binaries)) int {
	flag.Parse()
	if testing.Short() {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "atlantis-"+suite+"-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %s\n", suite, err)
		return 1
	}
	defer os.RemoveAll(dir) // nolint: errcheck
	bins, err := Build(dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %s\n", suite, err)
		return 1
	}
	use(bins)
	return m.Run()
}
