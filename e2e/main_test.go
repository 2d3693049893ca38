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
	"testing"

	"github.com/atlantis-enhanced/atlantis/e2e/e2ekit"
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
	dir, err := os.MkdirTemp("", "atlantis-e2e-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %s\n", err)
		return 1
	}
	defer os.RemoveAll(dir) // nolint: errcheck
	bins, err := e2ekit.Build(dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %s\n", err)
		return 1
	}
	atlantisBin, terraformDir = bins.Atlantis, bins.TerraformDir
	return m.Run()
}
