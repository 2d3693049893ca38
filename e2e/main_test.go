// Package e2e runs the real atlantis binary, two replicas at a time, against a
// real redis-server, real Terraform and the GitHub stand-in in e2e/vcssim, and
// asserts on what GitHub would show (comments, commit statuses) and on what
// Redis holds.
//
// `go test -short` skips the suite; otherwise a missing terraform or
// redis-server is a failure, never a skip.
package e2e

import (
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
	os.Exit(e2ekit.Main(m, "e2e", func(b e2ekit.Binaries) {
		atlantisBin, terraformDir = b.Atlantis, b.TerraformDir
	}))
}
