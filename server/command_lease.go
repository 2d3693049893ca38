package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	upstream "github.com/runatlantis/atlantis/server"
	"github.com/runatlantis/atlantis/server/events"
	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"
	tally "github.com/uber-go/tally/v4"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/commandlease"
)

// refusalCommenter is the part of upstream's VCS client that tells a pull
// its command did not run.
type refusalCommenter interface {
	CreateComment(logger logging.SimpleLogging, repo models.Repo, pullNum int, comment string, command string) error
}

// leasedCommandRunner runs each command only while it holds its pull's
// command lease, so one pull's commands never run at once on two replicas
// (or two goroutines of one): they would share the pull's working
// directory. A command that loses its lease is stopped (stopper) and fenced
// from the adapter until it returns.
type leasedCommandRunner struct {
	next     events.CommandRunner
	leases   *commandlease.Manager
	store    enhanced.CommandLeaseStore
	comments refusalCommenter
	stopper  *pullStopper
	logger   logging.SimpleLogging
}

// newCommandLeases builds the lease manager on the backend: in Redis for the
// Redis backend, shared by the fleet; in this process for BoltDB, which only
// one replica can open, and for the BoltDB fallback, which declares one
// replica and must run its commands while Redis is away.
func (s *Server) newCommandLeases(userConfig upstream.UserConfig, backend *lockBackend, scope tally.Scope) (*leasedCommandRunner, error) {
	store, shared := backend.Backend.(enhanced.CommandLeaseStore)
	if !shared || s.Config.Fallback.Mode == FallbackBoltDB {
		store = backends.NewMemoryCommandLeases()
	}
	f := s.Config.Features
	leases, err := commandlease.NewManager(store, commandlease.Options{
		Replica:     replicaName(userConfig.Port),
		TTL:         f.CommandLeaseTTL,
		WaitTimeout: f.CommandWaitTimeout,
		Logger:      s.Logger,
		Scope:       scope,
	})
	if err != nil {
		return nil, fmt.Errorf("enhanced locking: %w", err)
	}
	return &leasedCommandRunner{
		leases:   leases,
		store:    store,
		comments: s.LocksController.VCSClient,
		stopper:  newPullStopper(userConfig.DataDir, s.Logger),
		logger:   s.Logger,
	}, nil
}

// replicaName tells operators which replica runs a command.
func replicaName(port int) string {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown-host"
	}
	return fmt.Sprintf("%s:%d", host, port)
}

func (r *leasedCommandRunner) RunCommentCommand(baseRepo models.Repo, maybeHeadRepo *models.Repo, maybePull *models.PullRequest, user models.User, pullNum int, cmd *events.CommentCommand) {
	_ = r.run(context.Background(), baseRepo, pullNum, commentCommandName(cmd), nil, func() {
		r.next.RunCommentCommand(baseRepo, maybeHeadRepo, maybePull, user, pullNum, cmd)
	})
}

func (r *leasedCommandRunner) RunAutoplanCommand(baseRepo models.Repo, headRepo models.Repo, pull models.PullRequest, user models.User) {
	_ = r.run(context.Background(), baseRepo, pull.Num, "autoplan", nil, func() {
		r.next.RunAutoplanCommand(baseRepo, headRepo, pull, user)
	})
}

// run holds the pull's lease around command. If the lease is lost while
// command runs, the processes command started for the pull are stopped
// until it returns, and the adapter refuses its lock changes meanwhile.
// start, if not nil, is called once the lease is held, and command runs only
// if it returns nil.
//
// run returns nil once command returned with the lease held throughout;
// commandlease.ErrLeaseLost (wrapped) if the lease was lost before then;
// start's error; ctx's error if ctx ended while waiting for the lease (the
// pull is told nothing: its caller gave up); or the error the pull was told
// its command did not run for.
func (r *leasedCommandRunner) run(ctx context.Context, repo models.Repo, pullNum int, name string, start func() error, command func()) error {
	pull := enhanced.PullRef{RepoFullName: repo.FullName, Num: pullNum}
	lease, err := r.leases.Acquire(ctx, pull, name)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s of %s#%d did not start: %w", name, repo.FullName, pullNum, err)
		}
		r.refuse(repo, pullNum, name, err)
		return err
	}
	defer lease.Release()
	if start != nil {
		if err := start(); err != nil {
			return err
		}
	}
	// Logged while the lease is held, before it is released: the e2e suite
	// reads these lines to check that no two commands of a pull overlap.
	r.logger.Info("enhanced locking: %s of %s#%d starts, holding the pull's command lease", name, repo.FullName, pullNum)
	defer r.logger.Info("enhanced locking: %s of %s#%d finished; releasing the pull's command lease", name, repo.FullName, pullNum)
	returned := make(chan struct{})
	defer close(returned)
	go func() {
		select {
		case <-lease.Lost():
			r.stopper.stopUntil(pull, returned)
		case <-returned:
		}
	}()
	command()
	if err := lease.Err(); err != nil {
		return fmt.Errorf("%s of %s#%d: %w", name, repo.FullName, pullNum, err)
	}
	return nil
}

// refuse tells the pull its command did not run, and why.
func (r *leasedCommandRunner) refuse(repo models.Repo, pullNum int, name string, err error) {
	r.logger.Warn("enhanced locking: %s of %s#%d did not run: %s", name, repo.FullName, pullNum, err)
	if cerr := r.comments.CreateComment(r.logger, repo, pullNum, refusalComment(name, err), ""); cerr != nil {
		r.logger.Err("enhanced locking: telling %s#%d that %s did not run: %s", repo.FullName, pullNum, name, cerr)
	}
}

// refusalComment is what a pull whose command did not run is told.
func refusalComment(name string, err error) string {
	var b strings.Builder
	b.WriteString("**Command not run**: ")
	var timeout *commandlease.WaitTimeoutError
	if errors.As(err, &timeout) {
		holder := "another command of this pull request"
		if timeout.Holder.Token != "" {
			holder = fmt.Sprintf("`%s` of this pull request (running on %s since %s)", timeout.Holder.Command, timeout.Holder.Replica,
				timeout.Holder.Since.UTC().Format(time.RFC3339))
		}
		fmt.Fprintf(&b, "`%s` waited %s for %s to finish, and did not run. ", name, timeout.Waited, holder)
	} else {
		fmt.Fprintf(&b, "`%s` could not make sure no other command of this pull request runs at the same time (%s), and did not run. ", name, err)
	}
	b.WriteString("Atlantis runs one command per pull request at a time across its replicas, since they share its working directory. ")
	if name == "autoplan" {
		b.WriteString("Comment `atlantis plan` once the other command has finished.")
	} else {
		fmt.Fprintf(&b, "Comment `%s` again once the other command has finished.", name)
	}
	return b.String()
}

// commentCommandName is how a comment command is named to users.
func commentCommandName(cmd *events.CommentCommand) string {
	if cmd == nil {
		return "atlantis"
	}
	name := "atlantis " + cmd.Name.String()
	switch {
	case cmd.ProjectName != "":
		name += " -p " + cmd.ProjectName
	case cmd.RepoRelDir != "" || cmd.Workspace != "":
		if cmd.RepoRelDir != "" {
			name += " -d " + cmd.RepoRelDir
		}
		if cmd.Workspace != "" {
			name += " -w " + cmd.Workspace
		}
	}
	return name
}
