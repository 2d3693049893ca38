package cmd

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	upstreamcmd "github.com/runatlantis/atlantis/cmd"
	upstream "github.com/runatlantis/atlantis/server"
	"github.com/runatlantis/atlantis/server/logging"
	. "github.com/runatlantis/atlantis/testing"
	"github.com/spf13/viper"

	"github.com/atlantis-enhanced/atlantis/server"
)

// recordingCreator stands in for the real server and keeps what it was given.
type recordingCreator struct {
	called   bool
	user     upstream.UserConfig
	enhanced server.EnhancedLockingConfig
}

func (r *recordingCreator) NewServer(userConfig upstream.UserConfig, _ upstream.Config, enhanced server.EnhancedLockingConfig) (upstreamcmd.ServerStarter, error) {
	r.called, r.user, r.enhanced = true, userConfig, enhanced
	return dryRunStarter{}, nil
}

// runServerCmd runs `atlantis server` with the upstream flags a GitHub install
// needs plus args, and returns what the server would have been built with.
func runServerCmd(t *testing.T, args ...string) (*recordingCreator, string, error) {
	t.Helper()
	creator := &recordingCreator{}
	out := &bytes.Buffer{}
	s := &ServerCmd{
		Viper:         viper.New(),
		Logger:        logging.NewNoopLogger(t),
		ServerCreator: creator,
		Out:           out,
		SilenceOutput: true,
	}
	c := s.Init()
	base := []string{"--gh-user=bot", "--gh-token=ghp-super-secret", "--repo-allowlist=*", "--data-dir=" + t.TempDir()}
	c.SetArgs(append(base, args...))
	c.SetOut(&bytes.Buffer{})
	c.SetErr(&bytes.Buffer{})
	err := c.Execute()
	return creator, out.String(), err
}

func TestServerCmd_DefaultsKeepEnhancedLockingOff(t *testing.T) {
	creator, _, err := runServerCmd(t)
	Ok(t, err)
	Assert(t, creator.called, "server was not created")
	Equals(t, server.DefaultEnhancedLockingConfig(), creator.enhanced)
	Equals(t, "boltdb", creator.user.LockingDBType)
}

func TestServerCmd_ParsesEveryFlag(t *testing.T) {
	ca := writeFile(t, "ca.pem", "pem")
	rules := writeFile(t, "rules.yaml", "rules: []")
	creator, _, err := runServerCmd(t,
		"--enhanced-locking-enabled",
		"--enhanced-locking-backend=redis",
		"--enhanced-locking-redis-mode=sentinel",
		"--enhanced-locking-redis-addrs=s1:26379, s2:26379",
		"--enhanced-locking-redis-sentinel-master=locks",
		"--enhanced-locking-redis-username=atlantis",
		"--enhanced-locking-redis-password=pw",
		"--enhanced-locking-redis-db=3",
		"--enhanced-locking-redis-tls-enabled",
		"--enhanced-locking-redis-tls-ca-file="+ca,
		"--enhanced-locking-redis-key-prefix=team-a:",
		"--enhanced-locking-redis-pool-size=7",
		"--enhanced-locking-redis-dial-timeout=2s",
		"--enhanced-locking-redis-wait-replicas=1",
		"--enhanced-locking-priority-queue",
		"--enhanced-locking-priority-rules="+rules,
		"--enhanced-locking-queue-timeout=3h",
		"--enhanced-locking-queue-notice-lease=90s",
		"--enhanced-locking-wait-timeout=4s",
		"--enhanced-locking-auto-plan",
		"--enhanced-locking-deadlock-detection",
		"--enhanced-locking-deadlock-resolution=release-victim",
		"--enhanced-locking-deadlock-check-interval=30s",
		"--enhanced-locking-retry",
		"--enhanced-locking-retry-max-attempts=5",
		"--enhanced-locking-retry-backoff=50ms",
		"--enhanced-locking-command-lease-ttl=45s",
		"--enhanced-locking-command-wait-timeout=20m",
		"--enhanced-locking-stale-lock-reaper",
		"--enhanced-locking-stale-lock-reaper-interval=30m",
		"--enhanced-locking-stale-lock-reaper-dry-run",
		"--enhanced-locking-stale-lock-reaper-calls-per-minute=30",
		"--enhanced-locking-health-check-interval=1s",
	)
	Ok(t, err)
	Equals(t, server.EnhancedLockingConfig{
		Enabled: true,
		Backend: "redis",
		Redis: server.RedisLockingConfig{
			Mode: "sentinel", Addrs: []string{"s1:26379", "s2:26379"}, SentinelMaster: "locks",
			Username: "atlantis", Password: "pw", DB: 3, TLSEnabled: true, TLSCAFile: ca,
			KeyPrefix: "team-a:", PoolSize: 7, DialTimeout: 2 * time.Second, WaitReplicas: 1,
		},
		Features: server.LockingFeaturesConfig{
			PriorityQueue: true, PriorityRulesFile: rules, QueueTimeout: 3 * time.Hour, QueueNoticeLease: 90 * time.Second, WaitTimeout: 4 * time.Second,
			AutoPlan: true, DeadlockDetection: true, DeadlockResolution: "release-victim", DeadlockCheckInterval: 30 * time.Second,
			RetryMechanism: true, RetryMaxAttempts: 5, RetryBackoff: 50 * time.Millisecond,
			CommandLeaseTTL: 45 * time.Second, CommandWaitTimeout: 20 * time.Minute,
			StaleLockReaper: true, StaleLockReaperInterval: 30 * time.Minute, StaleLockReaperDryRun: true, StaleLockReaperCallsPerMinute: 30,
		},
		Fallback:    server.FallbackConfig{Mode: "none"},
		Performance: server.PerformanceConfig{HealthCheckInterval: time.Second},
	}, creator.enhanced)
}

func TestServerCmd_Precedence(t *testing.T) {
	config := writeFile(t, "config.yaml", strings.Join([]string{
		"enhanced-locking-redis-pool-size: 11",
		"enhanced-locking-redis-dial-timeout: 11s",
		"enhanced-locking-wait-timeout: 11s",
		"enhanced-locking-redis-addrs: [a:1, b:2]",
	}, "\n"))
	t.Setenv("ATLANTIS_ENHANCED_LOCKING_REDIS_DIAL_TIMEOUT", "22s")
	t.Setenv("ATLANTIS_ENHANCED_LOCKING_WAIT_TIMEOUT", "22s")
	creator, _, err := runServerCmd(t, "--config="+config, "--enhanced-locking-wait-timeout=33s")
	Ok(t, err)
	Equals(t, 11, creator.enhanced.Redis.PoolSize)                   // file over default
	Equals(t, 22*time.Second, creator.enhanced.Redis.DialTimeout)    // env over file
	Equals(t, 33*time.Second, creator.enhanced.Features.WaitTimeout) // flag over env
	Equals(t, []string{"a:1", "b:2"}, creator.enhanced.Redis.Addrs)  // YAML list
	Equals(t, 24*time.Hour, creator.enhanced.Features.QueueTimeout)  // default
	Equals(t, 2*time.Minute, creator.enhanced.Features.QueueNoticeLease)
}

func TestServerCmd_BadInput(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		description string
		args        []string
		env         map[string]string
		expErr      string
	}{
		{"unknown backend", []string{"--enhanced-locking-backend=etcd"},
			nil, `invalid --enhanced-locking-backend "etcd": use one of boltdb, redis`},
		{"unknown mode", []string{"--enhanced-locking-redis-mode=ring"},
			nil, `invalid --enhanced-locking-redis-mode "ring": use one of standalone, cluster, sentinel`},
		{"malformed address", []string{"--enhanced-locking-redis-addrs=redis"},
			nil, `invalid --enhanced-locking-redis-addrs "redis": use comma-separated host:port pairs`},
		{"empty address in list", []string{"--enhanced-locking-redis-addrs=a:1,,b:2"},
			nil, `invalid --enhanced-locking-redis-addrs "a:1,,b:2": use comma-separated host:port pairs`},
		{"bad port", []string{"--enhanced-locking-redis-addrs=a:99999"},
			nil, `invalid --enhanced-locking-redis-addrs "a:99999": port of "a:99999" must be a number from 1 to 65535`},
		{"redis without addresses", []string{"--enhanced-locking-enabled", "--enhanced-locking-backend=redis"},
			nil, `--enhanced-locking-backend=redis needs --enhanced-locking-redis-addrs`},
		{"sentinel without master", []string{"--enhanced-locking-enabled", "--enhanced-locking-backend=redis", "--enhanced-locking-redis-mode=sentinel", "--enhanced-locking-redis-addrs=s:26379"},
			nil, `--enhanced-locking-redis-mode=sentinel needs --enhanced-locking-redis-sentinel-master`},
		{"cluster with db", []string{"--enhanced-locking-enabled", "--enhanced-locking-backend=redis", "--enhanced-locking-redis-mode=cluster", "--enhanced-locking-redis-addrs=c:7000", "--enhanced-locking-redis-db=2"},
			nil, `invalid --enhanced-locking-redis-db 2: Redis Cluster only has database 0`},
		{"standalone with two addresses", []string{"--enhanced-locking-enabled", "--enhanced-locking-backend=redis", "--enhanced-locking-redis-addrs=a:1,b:2"},
			nil, `--enhanced-locking-redis-mode=standalone takes one address, got 2`},
		{"zero duration", []string{"--enhanced-locking-queue-timeout=0s"},
			nil, `invalid --enhanced-locking-queue-timeout "0s": use a duration greater than zero`},
		{"negative replica count", []string{"--enhanced-locking-redis-wait-replicas=-1"},
			nil, `invalid --enhanced-locking-redis-wait-replicas "-1": use a whole number: 0 or more replicas`},
		{"negative duration", []string{"--enhanced-locking-redis-dial-timeout=-1s"},
			nil, `invalid --enhanced-locking-redis-dial-timeout "-1s": use a duration greater than zero`},
		{"command lease shorter than a second", []string{"--enhanced-locking-command-lease-ttl=500ms"},
			nil, `invalid --enhanced-locking-command-lease-ttl 500ms: use 1s or more, such as the default 30s`},
		{"reaper dry run without the reaper", []string{"--enhanced-locking-stale-lock-reaper-dry-run"},
			nil, `--enhanced-locking-stale-lock-reaper-dry-run only applies to the stale-lock reaper: add --enhanced-locking-stale-lock-reaper=true or drop it`},
		{"no reaper calls", []string{"--enhanced-locking-stale-lock-reaper-calls-per-minute=0"},
			nil, `invalid --enhanced-locking-stale-lock-reaper-calls-per-minute "0"`},
		{"queue notice lease shorter than a second", []string{"--enhanced-locking-queue-notice-lease=200ms"},
			nil, `invalid --enhanced-locking-queue-notice-lease 200ms: use 1s or more, such as the default 2m0s`},
		{"zero command wait", []string{"--enhanced-locking-command-wait-timeout=0s"},
			nil, `invalid --enhanced-locking-command-wait-timeout "0s": use a duration greater than zero`},
		{"negative wait", []string{"--enhanced-locking-wait-timeout=-1s"},
			nil, `invalid --enhanced-locking-wait-timeout "-1s": use a duration of zero or more`},
		{"duration without unit", []string{"--enhanced-locking-retry-backoff=10"},
			nil, `invalid --enhanced-locking-retry-backoff "10": use a Go duration such as 500ms, 30s or 2h`},
		{"zero pool", []string{"--enhanced-locking-redis-pool-size=0"},
			nil, `invalid --enhanced-locking-redis-pool-size "0": use a whole number: a pool size of 1 or more`},
		{"negative db", []string{"--enhanced-locking-redis-db=-1"},
			nil, `invalid --enhanced-locking-redis-db "-1": use a whole number: a database number of 0 or more`},
		{"zero attempts", []string{"--enhanced-locking-retry-max-attempts=0"},
			nil, `invalid --enhanced-locking-retry-max-attempts "0": use a whole number: 1 or more attempts`},
		{"unknown resolution", []string{"--enhanced-locking-deadlock-resolution=kill"},
			nil, `invalid --enhanced-locking-deadlock-resolution "kill": use one of notify, release-victim`},
		{"deadlock detection without the queue", []string{"--enhanced-locking-enabled", "--enhanced-locking-deadlock-detection"},
			nil, `--enhanced-locking-deadlock-detection only applies to the priority queue: add --enhanced-locking-priority-queue=true or drop it`},
		{"deadlock resolution without detection", []string{"--enhanced-locking-enabled", "--enhanced-locking-priority-queue", "--enhanced-locking-deadlock-resolution=release-victim"},
			nil, `--enhanced-locking-deadlock-resolution only applies to deadlock detection: add --enhanced-locking-deadlock-detection=true (with --enhanced-locking-priority-queue=true) or drop it`},
		{"deadlock interval without detection", []string{"--enhanced-locking-enabled", "--enhanced-locking-deadlock-check-interval=5m"},
			nil, `--enhanced-locking-deadlock-check-interval only applies to deadlock detection: add --enhanced-locking-deadlock-detection=true (with --enhanced-locking-priority-queue=true) or drop it`},
		{"zero deadlock interval", []string{"--enhanced-locking-deadlock-check-interval=0s"},
			nil, `invalid --enhanced-locking-deadlock-check-interval "0s": use a duration greater than zero`},
		{"unknown fallback", []string{"--enhanced-locking-fallback=memory"},
			nil, `invalid --enhanced-locking-fallback "memory": use one of none, boltdb`},
		{"fallback without redis", []string{"--enhanced-locking-enabled", "--enhanced-locking-fallback=boltdb"},
			nil, `--enhanced-locking-fallback=boltdb only applies to --enhanced-locking-backend=redis`},
		{"missing CA file", []string{"--enhanced-locking-redis-tls-enabled", "--enhanced-locking-redis-tls-ca-file=" + filepath.Join(dir, "nope.pem")},
			nil, `invalid --enhanced-locking-redis-tls-ca-file "` + filepath.Join(dir, "nope.pem") + `": cannot read it (no such file or directory): give the path of a readable PEM file`},
		{"CA file is a directory", []string{"--enhanced-locking-redis-tls-enabled", "--enhanced-locking-redis-tls-ca-file=" + dir},
			nil, `invalid --enhanced-locking-redis-tls-ca-file "` + dir + `": it is a directory`},
		{"CA file without TLS", []string{"--enhanced-locking-redis-tls-ca-file=" + writeFile(t, "ca.pem", "x")},
			nil, `--enhanced-locking-redis-tls-ca-file is set but --enhanced-locking-redis-tls-enabled is false`},
		{"missing rules file", []string{"--enhanced-locking-priority-rules=" + filepath.Join(dir, "rules.yaml")},
			nil, `invalid --enhanced-locking-priority-rules "` + filepath.Join(dir, "rules.yaml") + `": cannot read it`},
		{"key prefix with an open hash tag", []string{"--enhanced-locking-redis-key-prefix=a{b"},
			nil, `invalid --enhanced-locking-redis-key-prefix: key prefix "a{b"`},
		{"key prefix upstream's List would scan", []string{"--enhanced-locking-redis-key-prefix=prod:"},
			nil, `invalid --enhanced-locking-redis-key-prefix: key prefix "prod:" starts with "pr": upstream's Redis database lists its locks by scanning "pr*"`},
		{"boltdb backend on upstream redis", []string{"--enhanced-locking-enabled", "--locking-db-type=redis"},
			nil, `--enhanced-locking-backend=boltdb needs --locking-db-type=boltdb, but it is redis: set --locking-db-type=boltdb, or use --enhanced-locking-backend=redis`},
		{"boltdb fallback on upstream redis", []string{"--enhanced-locking-enabled", "--locking-db-type=redis", "--enhanced-locking-backend=redis", "--enhanced-locking-redis-addrs=r:6379", "--enhanced-locking-fallback=boltdb"},
			nil, `--enhanced-locking-fallback=boltdb needs --locking-db-type=boltdb, but it is redis: set --locking-db-type=boltdb, or use --enhanced-locking-fallback=none`},
		{"bad bool in env", nil, map[string]string{"ATLANTIS_ENHANCED_LOCKING_ENABLED": "maybe"},
			`invalid --enhanced-locking-enabled "maybe": use true or false`},
		{"bad int in env", nil, map[string]string{"ATLANTIS_ENHANCED_LOCKING_REDIS_DB": "one"},
			`invalid --enhanced-locking-redis-db "one": use a whole number`},
		{"bad kill switch", nil, map[string]string{"DISABLE_ENHANCED_LOCKING": "perhaps"},
			`invalid DISABLE_ENHANCED_LOCKING "perhaps": use true or false`},
		// Viper reads a mapping as "", which was the default.
		{"mapping in the config file", []string{"--config=" + writeFile(t, "map.yaml", "enhanced-locking-redis-db: {db: 2}\n")},
			nil, `invalid --enhanced-locking-redis-db in the config file: it is a mapping (key: value pairs): give one value, as in enhanced-locking-redis-db: 0`},
		// A list was joined with commas, whatever the flag.
		{"list for a one-value key", []string{"--config=" + writeFile(t, "list.yaml", "enhanced-locking-redis-password: [pw1, pw2]\n")},
			nil, `invalid --enhanced-locking-redis-password in the config file: it is a list: give one value, as in enhanced-locking-redis-password: value`},
		{"list of lists", []string{"--config=" + writeFile(t, "lists.yaml", "enhanced-locking-redis-addrs: [[a:1]]\n")},
			nil, `invalid --enhanced-locking-redis-addrs in the config file: an item of the list is not a single value: give a list of values, as in enhanced-locking-redis-addrs: [a, b], or a comma-separated string`},
	}
	for _, c := range cases {
		t.Run(c.description, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			creator, _, err := runServerCmd(t, c.args...)
			ErrContains(t, c.expErr, err)
			Assert(t, !strings.Contains(err.Error(), "\n"), "error should be one line, got %q", err.Error())
			Assert(t, !creator.called, "server must not start on bad input")
		})
	}
}

func TestServerCmd_PasswordNeverInErrors(t *testing.T) {
	t.Setenv("ATLANTIS_ENHANCED_LOCKING_REDIS_PASSWORD", "hunter2")
	_, _, err := runServerCmd(t, "--enhanced-locking-enabled", "--enhanced-locking-backend=redis")
	Assert(t, err != nil, "expected an error")
	Assert(t, !strings.Contains(err.Error(), "hunter2"), "password leaked: %s", err)
}

func TestServerCmd_KillSwitch(t *testing.T) {
	t.Setenv("DISABLE_ENHANCED_LOCKING", "true")
	// Even a broken Redis config must not block the rollback.
	creator, _, err := runServerCmd(t, "--enhanced-locking-enabled", "--enhanced-locking-backend=redis")
	Ok(t, err)
	Assert(t, creator.called, "server was not created")
	Equals(t, false, creator.enhanced.Enabled)

	// A valid Redis config is kept, for the copy the rollback makes.
	creator, _, err = runServerCmd(t, "--enhanced-locking-enabled", "--enhanced-locking-backend=redis", "--enhanced-locking-redis-addrs=redis:6379")
	Ok(t, err)
	Equals(t, false, creator.enhanced.Enabled)
	Equals(t, "redis", creator.enhanced.Backend)
	Equals(t, []string{"redis:6379"}, creator.enhanced.Redis.Addrs)
}

func TestServerCmd_DryRunConfigDump(t *testing.T) {
	creator, out, err := runServerCmd(t, "--dry-run", "--config-dump",
		"--enhanced-locking-enabled", "--enhanced-locking-backend=redis",
		"--enhanced-locking-redis-addrs=127.0.0.1:6379",
		"--enhanced-locking-redis-password=Rd-7731",
		"--gh-webhook-secret=Hk-7731", "--api-secret=Api-7731", "--web-password=Web-7731")
	Ok(t, err)
	Assert(t, !creator.called, "--dry-run must not build the server")
	for _, secret := range []string{"ghp-super-secret", "Rd-7731", "Hk-7731", "Api-7731", "Web-7731"} {
		Assert(t, !strings.Contains(out, secret), "dump leaks %q:\n%s", secret, out)
	}
	for _, line := range []string{
		"enhanced-locking-enabled: \"true\"",
		"enhanced-locking-backend: redis",
		"enhanced-locking-redis-addrs: 127.0.0.1:6379",
		"enhanced-locking-redis-password: <redacted>",
		"gh-token: <redacted>",
		"gh-webhook-secret: <redacted>",
		"gh-user: bot",
		"locking-db-type: boltdb",
	} {
		Assert(t, strings.Contains(out, line+"\n"), "dump lacks %q:\n%s", line, out)
	}
	// The dump reads back as a config file with the same meaning.
	v := viper.New()
	v.SetConfigType("yaml")
	Ok(t, v.ReadConfig(strings.NewReader(out)))
	Equals(t, "redis", v.GetString("enhanced-locking-backend"))
}

func TestServerCmd_HelpListsEveryFlag(t *testing.T) {
	s := &ServerCmd{Viper: viper.New(), Logger: logging.NewNoopLogger(t), ServerCreator: &recordingCreator{}}
	c := s.Init()
	help := &bytes.Buffer{}
	c.SetOut(help)
	c.SetArgs([]string{"--help"})
	Ok(t, c.Execute())
	for _, f := range enhancedFlags {
		Assert(t, strings.Contains(help.String(), "--"+f.name), "help lacks --%s", f.name)
	}
	for _, name := range []string{"--dry-run", "--config-dump", "--gh-user", "--locking-db-type"} {
		Assert(t, strings.Contains(help.String(), name), "help lacks %s", name)
	}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	Ok(t, os.WriteFile(path, []byte(content), 0o600))
	return path
}

// A secret is used as given: a password with spaces at its ends keeps them,
// where trimming it would make Redis refuse it for no visible reason.
func TestServerCmd_SecretsAreNotTrimmed(t *testing.T) {
	creator, _, err := runServerCmd(t, "--enhanced-locking-redis-password= pass word ")
	Ok(t, err)
	Equals(t, " pass word ", creator.enhanced.Redis.Password)
}

// `atlantis testdrive` says where the testdrive went rather than that the
// command is unknown.
func TestTestdriveCmd_SaysWhereTheTestdriveWent(t *testing.T) {
	c := testdriveCmd()
	c.SetArgs(nil)
	c.SetOut(&bytes.Buffer{})
	c.SetErr(&bytes.Buffer{})
	ErrContains(t, "make run", c.Execute())
}
