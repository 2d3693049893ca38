// Package server is the composition root: upstream's Atlantis server with
// enhanced locking installed through one seam.
package server

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"time"

	upstream "github.com/runatlantis/atlantis/server"
	"github.com/runatlantis/atlantis/server/core/db"
	"github.com/runatlantis/atlantis/server/core/locking"
	"github.com/runatlantis/atlantis/server/events/command"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/commandlease"
	lockevents "github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/events"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/legacydb"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/metrics"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/queue"
	redisclient "github.com/atlantis-enhanced/atlantis/server/core/redis"
)

// Server is upstream's server plus what enhanced locking adds to it.
type Server struct {
	*upstream.Server
	Config EnhancedLockingConfig
	// Adapter serves every lock operation; nil when enhanced locking is off.
	Adapter *enhanced.Adapter
	// backend is what the adapter runs on, with its health and resources.
	backend *lockBackend
	// queue is the priority queue; nil when it is off.
	queue *lockQueue
	// deadlocks is the deadlock detector; nil when it is off.
	deadlocks *deadlockDetection
	// leases run one command per pull across the fleet; nil when enhanced
	// locking is off.
	leases *commandlease.Manager
	// leaseStore keeps the command leases, and the reaper's turns.
	leaseStore enhanced.CommandLeaseStore
	// webhookSecrets are upstream's --gh-webhook-secret,
	// --gitlab-webhook-secret and --gitea-webhook-secret: the delivery
	// de-duplication claims only requests that pass upstream's check of them.
	webhookSecrets webhookSecrets
	// events is the lock event stream the adapter and the queue publish on;
	// sampler keeps the gauges. Both nil when enhanced locking is off.
	events  *lockevents.Bus
	sampler *metrics.Sampler
	// apiSecret is upstream's --api-secret: our API routes check it as
	// upstream's API does.
	apiSecret []byte
}

// NewServer builds upstream's server from its own config, then, when enhanced
// locking is on, puts the enhanced adapter behind its lock clients.
func NewServer(userConfig upstream.UserConfig, config upstream.Config, cfg EnhancedLockingConfig) (*Server, error) {
	srv, err := upstream.NewServer(userConfig, config)
	if err != nil {
		return nil, err
	}
	s := &Server{
		Server: srv,
		Config: cfg,
		webhookSecrets: webhookSecrets{
			github: []byte(userConfig.GithubWebhookSecret),
			gitlab: []byte(userConfig.GitlabWebhookSecret),
			gitea:  []byte(userConfig.GiteaWebhookSecret),
		},
		apiSecret: []byte(userConfig.APISecret),
	}
	if !cfg.Enabled {
		srv.Logger.Info("enhanced locking is off: locks use the legacy %s database", userConfig.LockingDBType)
		copyLocksForRollback(cfg, userConfig, srv.LocksController.Database, srv.Logger)
		return s, nil
	}
	legacy := srv.LocksController.Database
	if err := s.enable(userConfig, legacy); err != nil {
		legacy.Close() // nolint: errcheck
		return nil, err
	}
	return s, nil
}

// fallbackJournalFile, in the data dir, names the locks a BoltDB fallback
// changed until they are replayed into Redis.
const fallbackJournalFile = "enhanced-locking-fallback.journal"

func (s *Server) enable(userConfig upstream.UserConfig, database db.Database) (err error) {
	defer func() {
		if err != nil && s.events != nil {
			s.events.Close()
		}
	}()
	// Made before anything else uses the database: every enhanced component
	// reaches the legacy locks through this one guard.
	scope := s.StatsScope.SubScope("enhanced")
	legacy, err := legacydb.Guard(database, guardOptions(userConfig, s.Logger, scope))
	if err != nil {
		return fmt.Errorf("enhanced locking: %w", err)
	}
	backend, err := newLockBackend(s.Config, userConfig, legacy, s.Logger, scope)
	if err != nil {
		return err
	}
	s.backend = backend
	s.events = newEventBus(scope, s.Config.Backend, s.Logger)
	journal, err := enhanced.OpenFallbackJournal(filepath.Join(userConfig.DataDir, fallbackJournalFile))
	if err != nil {
		backend.Close() // nolint: errcheck
		return fmt.Errorf("enhanced locking: %w", err)
	}
	leases, err := s.newCommandLeases(userConfig, backend, scope)
	if err != nil {
		backend.Close() // nolint: errcheck
		return err
	}
	if s.queue, err = s.newLockQueue(userConfig, backend, leases); err != nil {
		backend.Close() // nolint: errcheck
		return err
	}
	var queuePolicy enhanced.QueuePolicy
	var tracking *queue.Policy
	if s.queue != nil {
		queuePolicy, tracking = s.queue.policy, s.queue.policy
	}
	if _, err := installCommandRunner(s.Server, leases, tracking); err != nil {
		backend.Close() // nolint: errcheck
		return err
	}
	if err := installCommandFence(s.Server, userConfig, leases.leases, s.Logger); err != nil {
		backend.Close() // nolint: errcheck
		return err
	}
	s.leases, s.leaseStore = leases.leases, leases.store
	s.Adapter = enhanced.NewAdapter(legacy, backend.Backend, enhanced.AdapterOptions{
		BackendName:         s.Config.Backend,
		SeparateLegacyLocks: backend.separateFromLegacy,
		FallbackToLegacy:    s.Config.Fallback.Mode == FallbackBoltDB,
		WaitTimeout:         s.Config.Features.WaitTimeout,
		Queue:               queuePolicy,
		Fence:               leases.leases,
		Retry:               retryPolicy(s.Config.Features),
		FallbackJournal:     journal,
		BackendUnavailable:  backend.reportUnavailable,
		Logger:              s.Logger,
		Events:              s.events,
	})
	s.sampler = s.newSampler(scope, backend)
	if s.deadlocks, err = s.newDeadlockDetection(backend, scope, leases.leases); err != nil {
		backend.Close() // nolint: errcheck
		return err
	}
	if backend.health != nil {
		backend.health.OnChange(func(_, now healthReport) {
			s.Adapter.BackendHealthChanged(now.Status != redisclient.HealthUnhealthy)
			s.sampler.Sample()
		})
	}
	if err := s.Adapter.ReplayFallbackJournal(); err != nil {
		backend.Close() // nolint: errcheck
		return fmt.Errorf("enhanced locking: the locks a fallback changed before the last stop (%s) could not be copied into %s: %w; "+
			"start again once it answers, and the copy is made then", filepath.Join(userConfig.DataDir, fallbackJournalFile), s.Config.Backend, err)
	}
	r, onRedis := backend.Backend.(*backends.Redis)
	if onRedis {
		s.repairIndexes(r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if backend.separateFromLegacy {
		tookBack := func() error { return nil }
		if onRedis {
			if tookBack, err = s.takeBackAfterRollback(ctx, legacy, r); err != nil {
				backend.Close() // nolint: errcheck
				return fmt.Errorf("enhanced locking: taking the locks back from the legacy database after a rollback: %w", err)
			}
		}
		n, err := s.Adapter.ImportLegacyLocks(ctx)
		if err != nil {
			backend.Close() // nolint: errcheck
			return fmt.Errorf("importing the legacy locks into enhanced locking: %w", err)
		}
		s.Logger.Info("enhanced locking: %d lock(s) from the legacy database are in %s", n, s.Config.Backend)
		if err := tookBack(); err != nil {
			s.Logger.Warn("enhanced locking: the locks are taken back after the rollback, but its marker could not be removed (the next start takes them back again, which changes nothing): %v", err)
		}
	}
	if err := installLockingAdapter(s.Server, s.Adapter, userConfig); err != nil {
		backend.Close() // nolint: errcheck
		return err
	}
	s.Logger.Info("enhanced locking is on: backend %s", backend.describe)
	return nil
}

// startupRepairTimeout bounds the index repair at start-up.
const startupRepairTimeout = 30 * time.Second

// repairIndexes puts back per-pull index entries a lost write left out. It
// costs O(locks), and since a missing entry only hides a lock from closing
// its pull until the next repair, a failure is reported and never stops
// start-up.
func (s *Server) repairIndexes(r *backends.Redis) {
	ctx, cancel := context.WithTimeout(context.Background(), startupRepairTimeout)
	defer cancel()
	n, err := r.RepairIndexes(ctx)
	if err != nil {
		s.Logger.Warn("enhanced locking: could not repair the lock indexes at start-up, starting anyway (closing a pull may "+
			"miss a lock whose index entry was lost, until the next start): %v", err)
		return
	}
	s.Logger.Info("enhanced locking: %d lock(s) already in Redis", n)
}

// installLockingAdapter is the one seam between upstream and enhanced locking.
//
// upstream.NewServer builds its lock database internally and hands the same
// *locking.Client and *locking.ApplyClient pointers to every component that
// locks (project locker, unlock command, pull-closed cleanup, locks
// controller, API). Overwriting the values they point to redirects all of
// them at once; the legacy database stays where it is for pull status.
// TestSeamTypes fails if an upstream upgrade changes these types.
func installLockingAdapter(srv *upstream.Server, database db.Database, userConfig upstream.UserConfig) error {
	applyClient, ok := srv.ApplyLocker.(*locking.ApplyClient)
	if !ok {
		return fmt.Errorf("upstream's apply locker is a %T, not *locking.ApplyClient: this upstream version is not supported by enhanced locking; start with --enhanced-locking-enabled=false", srv.ApplyLocker)
	}
	allowCommands, err := userConfig.ToAllowCommandNames()
	if err != nil {
		return err
	}
	disableApply := !slices.Contains(allowCommands, command.Apply)
	newApplyClient, ok := locking.NewApplyClient(database, disableApply, userConfig.DisableGlobalApplyLock).(*locking.ApplyClient)
	if !ok {
		return fmt.Errorf("upstream's locking.NewApplyClient no longer returns *locking.ApplyClient: this upstream version is not supported by enhanced locking; start with --enhanced-locking-enabled=false")
	}
	if userConfig.DisableRepoLocking {
		// Upstream then locks projects with a NoOpLocker: nothing to redirect.
		*applyClient = *newApplyClient
		return nil
	}
	client, ok := srv.Locker.(*locking.Client)
	if !ok {
		return fmt.Errorf("upstream's locker is a %T, not *locking.Client: this upstream version is not supported by enhanced locking; start with --enhanced-locking-enabled=false", srv.Locker)
	}
	*applyClient = *newApplyClient
	*client = *locking.NewClient(database)
	return nil
}

// Start registers our routes ahead of upstream's, so ours answer first, and
// runs upstream's server until it stops.
func (s *Server) Start() error {
	s.registerRoutes()
	stop, err := s.startEnhanced()
	if err != nil {
		return err
	}
	err = s.Server.Start()
	stop()
	if closeErr := s.closeEnhanced(); closeErr != nil {
		s.Logger.Err("closing enhanced locking backend: %v", closeErr)
	}
	return err
}

// startEnhanced starts what enhanced locking runs in the background: the
// health checks, the queue's worker and the metrics sampler. stop ends them
// and waits for the queue's re-plans and comments.
func (s *Server) startEnhanced() (stop func(), err error) {
	ctx, cancel := context.WithCancel(context.Background())
	s.watchBackend(ctx)
	if s.queue != nil {
		s.queue.start()
	}
	s.deadlocks.start()
	var running sync.WaitGroup
	if s.sampler != nil {
		running.Go(func() { s.sampler.Run(ctx) })
	}
	stop = func() {
		cancel()
		s.deadlocks.stop()
		s.queue.stop()
		running.Wait()
	}
	if err := s.startReaper(ctx, &running); err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}

// closeEnhanced stops enhanced locking at shutdown: the lock changes still on
// their way into the legacy database land there, the subscribers hear the
// events already published, then the backend and its Redis client close.
// Upstream closes the legacy database after.
func (s *Server) closeEnhanced() error {
	if s.backend == nil {
		return nil
	}
	err := s.Adapter.Close()
	s.events.Close()
	return errors.Join(err, s.backend.Close())
}

// watchBackend checks the backend's health until ctx is done, switching the
// adapter to the fallback and back as it changes.
func (s *Server) watchBackend(ctx context.Context) {
	if s.backend == nil || s.backend.health == nil {
		return
	}
	s.backend.health.Start(ctx)
	go s.retryRecovery(ctx)
	if s.backend.sharedWithLegacy {
		go s.backend.scanForUnindexedLocks(ctx, s.Logger)
	}
}

// retryRecovery tells the adapter the backend's health at every interval, not
// only when it changes, so a fallback whose replay failed while Redis stayed
// healthy is tried again.
func (s *Server) retryRecovery(ctx context.Context) {
	ticker := time.NewTicker(s.Config.Performance.HealthCheckInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			s.Adapter.BackendHealthChanged(s.backend.health.Status().Status != redisclient.HealthUnhealthy)
		}
	}
}

func retryPolicy(f LockingFeaturesConfig) enhanced.RetryPolicy {
	if !f.RetryMechanism {
		return enhanced.RetryPolicy{MaxAttempts: 1}
	}
	return enhanced.RetryPolicy{MaxAttempts: f.RetryMaxAttempts, Backoff: f.RetryBackoff}
}
