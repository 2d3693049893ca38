package cmd

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/atlantis-enhanced/atlantis/testdrive"
)

// TestdriveCmd replaces upstream's ngrok-based testdrive with one that runs
// fully offline: a GitHub stand-in, Redis and two replicas on this machine.
type TestdriveCmd struct{}

// Init returns the testdrive command.
func (t *TestdriveCmd) Init() *cobra.Command {
	opts := testdrive.Options{Out: os.Stdout}
	c := &cobra.Command{
		Use:   "testdrive",
		Short: "Try Atlantis with enhanced locking offline: two replicas, Redis and a GitHub stand-in",
		Long: `Starts a GitHub stand-in, Redis (in-process unless --redis-addr is given) and two
Atlantis replicas with enhanced locking on this machine, then plays two teams'
pull requests on one Terraform project and narrates what happens: the shared lock,
the queue that hands it on, a critical pull going first, and a race of plans on
both replicas.`,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			binary, err := os.Executable()
			if err != nil {
				return fmt.Errorf("finding the atlantis binary: %w", err)
			}
			opts.Binary = binary
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return testdrive.Run(ctx, opts)
		},
	}
	c.Flags().StringVar(&opts.RedisAddr, "redis-addr", "", "host:port of a Redis to use instead of the in-process one")
	c.Flags().BoolVar(&opts.ExitAfterStory, "exit-after-story", false, "Stop once the story is told (for CI smoke tests)")
	c.Flags().IntVar(&opts.RaceRounds, "race-rounds", testdrive.DefaultRaceRounds, "How many rounds the story races two plans on one project across the replicas")
	return c
}
