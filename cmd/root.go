// Package cmd holds the atlantis CLI: upstream's commands plus enhanced
// locking.
package cmd

import (
	"fmt"

	upstreamcmd "github.com/runatlantis/atlantis/cmd"
	"github.com/runatlantis/atlantis/server/logging"
	"github.com/spf13/cobra"
	"github.com/spf13/viper"
)

// Main runs the CLI and returns the process exit code.
func Main(version, commit, date string) int {
	logger, err := logging.NewStructuredLogger()
	if err != nil {
		fmt.Printf("unable to initialize logger: %s\n", err)
		return 1
	}
	sha := commit
	if len(sha) >= 7 {
		sha = sha[:7]
	}
	atlantisVersion := fmt.Sprintf("%s (commit: %s) (build date: %s)", version, sha, date)

	root := &cobra.Command{
		Use:   "atlantis",
		Short: "Terraform Pull Request Automation, with enhanced locking",
	}
	srv := &ServerCmd{Viper: viper.New(), AtlantisVersion: atlantisVersion, Logger: logger}
	root.AddCommand(srv.Init())
	root.AddCommand((&upstreamcmd.VersionCmd{AtlantisVersion: atlantisVersion}).Init())
	root.AddCommand(testdriveCmd())
	if err := root.Execute(); err != nil {
		return 1
	}
	return 0
}
