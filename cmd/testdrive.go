package cmd

import (
	"errors"

	"github.com/spf13/cobra"
)

// errTestdriveMoved answers `atlantis testdrive`: the offline testdrive is a
// binary of its own, so the product links none of its test doubles.
var errTestdriveMoved = errors.New("the offline testdrive is its own binary: run `make run` in a checkout of this repository, or bin/atlantis-testdrive next to bin/atlantis")

// testdriveCmd keeps `atlantis testdrive` answering with where the testdrive
// went.
func testdriveCmd() *cobra.Command {
	return &cobra.Command{
		Use:          "testdrive",
		Short:        "Moved: the offline testdrive is bin/atlantis-testdrive (make run)",
		SilenceUsage: true,
		RunE:         func(*cobra.Command, []string) error { return errTestdriveMoved },
	}
}
