// Command atlantis-testdrive is the offline testdrive (`make run`): it starts
// the atlantis binary built next to it as two replicas, with Redis and a
// GitHub stand-in, and tells the story. It lives apart from the atlantis
// binary so that one links none of these stand-ins.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/atlantis-enhanced/atlantis/testdrive"
)

func main() {
	if err := command().Execute(); err != nil {
		os.Exit(1)
	}
}

func command() *cobra.Command {
	opts := testdrive.Options{Out: os.Stdout}
	c := &cobra.Command{
		Use:   "atlantis-testdrive",
		Short: "Try Atlantis with enhanced locking offline: two replicas, Redis and a GitHub stand-in",
		Long: `Starts a GitHub stand-in, Redis (a redis-server of its own, miniredis in-process
where none is installed, or the one --redis-addr names) and two Atlantis replicas
with enhanced locking on this machine, then plays two teams' pull requests on one
Terraform project and narrates what happens: the shared lock, the queue that
hands it on, a critical pull going first, and a race of plans on both replicas.`,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			binary, err := atlantisBinary(opts.Binary)
			if err != nil {
				return err
			}
			opts.Binary = binary
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return testdrive.Run(ctx, opts)
		},
	}
	c.Flags().StringVar(&opts.Binary, "atlantis-binary", "", "The atlantis binary the replicas run; defaults to the atlantis next to this program")
	c.Flags().StringVar(&opts.RedisAddr, "redis-addr", "", "host:port of a Redis to use instead of starting one")
	c.Flags().BoolVar(&opts.ExitAfterStory, "exit-after-story", false, "Stop once the story is told (for CI smoke tests)")
	c.Flags().IntVar(&opts.RaceRounds, "race-rounds", testdrive.DefaultRaceRounds, "How many rounds the story races two plans on one project across the replicas")
	return c
}

// atlantisBinary is given when set, else the atlantis that `make run` builds
// next to this program in bin/.
func atlantisBinary(given string) (string, error) {
	path := given
	if path == "" {
		self, err := os.Executable()
		if err != nil {
			return "", fmt.Errorf("finding this program to find the atlantis binary next to it: %w; pass --atlantis-binary", err)
		}
		path = filepath.Join(filepath.Dir(self), "atlantis")
	}
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("%w: build the atlantis binary with `make build` (or run `make run`), or pass --atlantis-binary=PATH", err)
	}
	return path, nil
}
