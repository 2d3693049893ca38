// Package e2e runs the real atlantis binary, two replicas at a time, against a
// real redis-server, real Terraform and the GitHub stand-in in e2e/vcssim, and
// asserts on what GitHub would show (comments, commit statuses) and on what
// Redis holds.
//
// `go test -short` skips the suite; otherwise a missing terraform or
// redis-server is a failure, never a skip.
package e2e

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

var (
	// atlantisBin is the binary TestMain built from this module.
	atlantisBin string
	// terraformDir holds the terraform binary the replicas run.
	terraformDir string
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		// Each test skips itself through newHarness.
		os.Exit(m.Run())
	}
	os.Exit(setupAndRun(m))
}

func setupAndRun(m *testing.M) int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "e2e: "+format+"\n", args...)
		return 1
	}
	wd, err := os.Getwd()
	if err != nil {
		return fail("%s", err)
	}
	terraformDir, err = testdrive.FindTerraform(wd)
	if err != nil {
		return fail("%s", err)
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		return fail("redis-server not found (install the Debian package redis-server, or run ./scripts/install-deps.sh): %s", err)
	}

	dir, err := os.MkdirTemp("", "atlantis-e2e-bin-")
	if err != nil {
		return fail("%s", err)
	}
	defer os.RemoveAll(dir) // nolint: errcheck
	atlantisBin = filepath.Join(dir, "atlantis")
	build := exec.Command(goTool(), "build", "-o", atlantisBin, "github.com/atlantis-enhanced/atlantis") // nolint: gosec
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fail("building atlantis: %s", err)
	}
	return m.Run()
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
