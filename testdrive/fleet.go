package testdrive

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
)

// FleetConfig describes replicas that share one Redis, one data dir and one
// GitHub stand-in, as a production fleet shares Redis, a volume and GitHub.
type FleetConfig struct {
	Binary   string
	Replicas int
	// RedisAddr holds both upstream's pull status (--locking-db-type=redis)
	// and the enhanced locks.
	RedisAddr string
	DataDir   string
	// TerraformDir holds the terraform binary the replicas run.
	TerraformDir string
	Sim          *vcssim.Sim
	// ExtraArgs are added to every replica's flags.
	ExtraArgs []string
	// ReplicaArgs[i] are added to the flags of the i-th replica StartFleet
	// starts, after ExtraArgs, so they override them: for example
	// --enhanced-locking-enabled=false on one replica of a mixed fleet.
	ReplicaArgs [][]string
	// ReplicaRedisAddrs[i], when set, is where the i-th replica reaches
	// RedisAddr instead, e.g. a proxy that records or cuts its traffic.
	ReplicaRedisAddrs []string
	Log               io.Writer
}

// Fleet is a set of running replicas.
type Fleet struct {
	cfg      FleetConfig
	Replicas []*Replica
}

// StartFleet starts cfg.Replicas replicas and waits until all are healthy.
func StartFleet(ctx context.Context, cfg FleetConfig) (*Fleet, error) {
	if len(cfg.ReplicaArgs) > cfg.Replicas {
		return nil, fmt.Errorf("FleetConfig has flags for %d replicas but starts %d", len(cfg.ReplicaArgs), cfg.Replicas)
	}
	if len(cfg.ReplicaRedisAddrs) > cfg.Replicas {
		return nil, fmt.Errorf("FleetConfig has Redis addresses for %d replicas but starts %d", len(cfg.ReplicaRedisAddrs), cfg.Replicas)
	}
	f := &Fleet{cfg: cfg}
	for i := range cfg.Replicas {
		var own []string
		if i < len(cfg.ReplicaArgs) {
			own = cfg.ReplicaArgs[i]
		}
		redisAddr := cfg.RedisAddr
		if i < len(cfg.ReplicaRedisAddrs) && cfg.ReplicaRedisAddrs[i] != "" {
			redisAddr = cfg.ReplicaRedisAddrs[i]
		}
		if _, err := f.startReplica(ctx, fmt.Sprintf("replica-%d", i+1), redisAddr, own); err != nil {
			f.Stop()
			return nil, err
		}
	}
	return f, nil
}

// StartReplica adds one replica to the fleet, with the fleet's ExtraArgs.
func (f *Fleet) StartReplica(ctx context.Context, name string) (*Replica, error) {
	return f.startReplica(ctx, name, f.cfg.RedisAddr, nil)
}

// ReplicaEnv names, in the environment of a replica and of every process it
// starts (Terraform, workflow steps), the replica that started it.
const ReplicaEnv = "ATLANTIS_TESTDRIVE_REPLICA"

// startReplica starts a replica on redisAddr with the fleet's flags followed
// by own. Its GitHub token names it (vcssim's ClientToken), so the stand-in
// records which replica made each request.
func (f *Fleet) startReplica(ctx context.Context, name, redisAddr string, own []string) (*Replica, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	r, err := StartReplica(ctx, ReplicaConfig{
		Name:   name,
		Binary: f.cfg.Binary,
		Port:   port,
		Args:   append(f.replicaArgs(name, port, redisAddr), own...),
		Env:    append(f.replicaEnv(), ReplicaEnv+"="+name),
		Log:    f.cfg.Log,
	})
	if err != nil {
		return nil, err
	}
	f.Replicas = append(f.Replicas, r)
	return r, nil
}

func (f *Fleet) replicaArgs(name string, port int, redisAddr string) []string {
	sim := f.cfg.Sim
	redisHost, redisPort, _ := net.SplitHostPort(redisAddr)
	args := []string{
		fmt.Sprintf("--atlantis-url=http://127.0.0.1:%d", port),
		"--data-dir=" + f.cfg.DataDir,
		"--gh-hostname=" + sim.Host(),
		"--gh-user=" + sim.User(),
		"--gh-token=" + sim.ClientToken(name),
		"--gh-webhook-secret=" + sim.WebhookSecret(),
		"--repo-allowlist=*",
		"--tf-download=false",
		"--locking-db-type=redis",
		"--redis-host=" + redisHost,
		"--redis-port=" + redisPort,
		"--enhanced-locking-enabled",
		"--enhanced-locking-backend=redis",
		"--enhanced-locking-redis-addrs=" + redisAddr,
		"--enhanced-locking-health-check-interval=1s",
	}
	return append(args, f.cfg.ExtraArgs...)
}

func (f *Fleet) replicaEnv() []string {
	env := append([]string{}, f.cfg.Sim.Env()...)
	env = append(env, "TF_IN_AUTOMATION=1", "CHECKPOINT_DISABLE=1")
	// A CLI config path that points nowhere makes every terraform run warn,
	// and the warning would land in the plan comments.
	if cfgFile := os.Getenv("TF_CLI_CONFIG_FILE"); cfgFile != "" {
		if _, err := os.Stat(cfgFile); err != nil {
			env = append(env, "TF_CLI_CONFIG_FILE=")
		}
	}
	if f.cfg.TerraformDir != "" {
		env = append(env, "PATH="+f.cfg.TerraformDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	}
	return env
}

// Stop stops every replica.
func (f *Fleet) Stop() {
	for _, r := range f.Replicas {
		r.Stop()
	}
}

// FindTerraform returns the directory of a terraform binary: the project's
// .tools/bin (where scripts/install-deps.sh builds 1.5.7) when it exists
// above dir, else the one on PATH.
func FindTerraform(dir string) (string, error) {
	for d := dir; ; d = filepath.Dir(d) {
		candidate := filepath.Join(d, ".tools", "bin", "terraform")
		if _, err := os.Stat(candidate); err == nil {
			return filepath.Dir(candidate), nil
		}
		if filepath.Dir(d) == d {
			break
		}
	}
	for _, p := range strings.Split(os.Getenv("PATH"), string(os.PathListSeparator)) {
		if _, err := os.Stat(filepath.Join(p, "terraform")); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no terraform found: run ./scripts/install-deps.sh (it builds Terraform 1.5.7 into .tools/bin)")
}
