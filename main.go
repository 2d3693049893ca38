// Package main is the entrypoint of the atlantis binary: upstream Atlantis
// with enhanced locking.
package main

import (
	"os"

	"github.com/atlantis-enhanced/atlantis/cmd"
)

// Filled in at release time with -ldflags.
var (
	version = "dev"
	commit  = "none"
	date    = "unknown"
)

func main() {
	os.Exit(cmd.Main(version, commit, date))
}
