// Package redistest starts real redis-server processes on free loopback ports
// for tests: standalone (optionally with a password, an ACL user, TLS or an
// append-only file), a three-master cluster, and a master/replica/sentinel set.
//
// Every process runs in its own t.TempDir(), is stopped by t.Cleanup, and is
// started with Pdeathsig so an aborted test binary leaves no orphan.
// A missing redis-server fails the test: Redis-backed tests must never pass
// by being skipped.
package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/atlantis-enhanced/atlantis/testing/testpki"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

const (
	// readyTimeout bounds how long a process may take to answer PING.
	readyTimeout = 10 * time.Second
	// stopTimeout bounds a graceful SIGTERM shutdown before SIGKILL.
	stopTimeout = 10 * time.Second
	// portAttempts covers the window between picking a free port and
	// redis-server binding it, in which a parallel test may take it.
	portAttempts = 3
	logTailLines = 30
)

// Server is one redis-server (or redis-sentinel) process.
type Server struct {
	// Addr is 127.0.0.1:port.
	Addr string
	// Dir is the process's working directory (data, AOF, logs).
	Dir string
	// CAFile is the PEM CA that signed the server certificate (WithTLS only).
	CAFile string
	// WrongCAFile is a PEM CA unrelated to the server (WithTLS only).
	WrongCAFile string

	t        testing.TB
	cfg      config
	tls      *testpki.PKI
	sentinel bool
	cluster  bool
	// extraConf is appended to the generated configuration, e.g. replicaof.
	extraConf []string
	port      int
	busPort   int

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	logFile *os.File
}

// Start starts a standalone redis-server and stops it when the test ends.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	s := newServer(t, cfg)
	s.start()
	return s
}

func newServer(t testing.TB, cfg config) *Server {
	t.Helper()
	requireBinary(t, "redis-server")
	s := &Server{t: t, cfg: cfg, Dir: t.TempDir()}
	if cfg.tls {
		pki, err := testpki.New(s.Dir, "redis")
		if err != nil {
			t.Fatalf("redistest: generating TLS certificates: %v", err)
		}
		// Only its CA is used, to prove clients reject a server it did not sign.
		wrong, err := testpki.New(s.Dir, "wrong")
		if err != nil {
			t.Fatalf("redistest: generating the unrelated CA: %v", err)
		}
		s.tls = pki
		s.CAFile = pki.CAFile
		s.WrongCAFile = wrong.CAFile
	}
	// Registered before the first launch so a failed start is cleaned up too.
	t.Cleanup(s.Stop)
	return s
}

// start picks free ports and launches the process, retrying when another
// test grabbed the port in between.
func (s *Server) start() {
	s.t.Helper()
	var err error
	for attempt := 0; attempt < portAttempts; attempt++ {
		s.port = freePort(s.t)
		if s.cluster {
			s.busPort = freePort(s.t)
		}
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
		if err = s.writeConf(); err != nil {
			s.t.Fatalf("redistest: %v", err)
		}
		err = s.launch()
		if err == nil {
			return
		}
		if !errors.Is(err, errPortInUse) {
			break
		}
	}
	s.t.Fatalf("redistest: starting redis-server: %v", err)
}

// Stop sends SIGTERM and waits for the process to exit, killing it if it
// does not exit in time. It is safe to call more than once.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	// A paused process handles the signal only once it runs again.
	_ = s.cmd.Process.Signal(syscall.SIGCONT)
	select {
	case <-s.done:
	case <-time.After(stopTimeout):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
	_ = s.logFile.Close()
}

// Kill ends the process with SIGKILL, as a crash or the OOM killer would:
// nothing is flushed, so what survives is what the append-only file had
// synced. Restart brings it back.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
	_ = s.logFile.Close()
}

// Pause freezes the process with SIGSTOP: connections stay open and nothing
// answers, as with a network partition, until Resume.
func (s *Server) Pause() error { return s.signal(syscall.SIGSTOP) }

// Resume lets a paused process go on (SIGCONT).
func (s *Server) Resume() error { return s.signal(syscall.SIGCONT) }

// signal sends sig to the process this Server started, and to no other.
func (s *Server) signal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return fmt.Errorf("redistest: redis-server on %s is not running", s.Addr)
	}
	return s.cmd.Process.Signal(sig)
}

// Restart starts the process again on the same port and in the same
// directory, stopping it first if it is running. Data survives only with
// WithAppendOnly (cluster nodes keep their nodes.conf regardless).
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	if err := s.launch(); err != nil {
		s.t.Fatalf("redistest: restarting redis-server on %s: %v", s.Addr, err)
	}
}

// Options returns go-redis options for this server, with the password, ACL
// user and TLS settings it was started with.
func (s *Server) Options() *redis.Options {
	opt := &redis.Options{
		Addr:         s.Addr,
		DialTimeout:  time.Second,
		ReadTimeout:  2 * time.Second,
		WriteTimeout: 2 * time.Second,
		// Redis 7.0 does not know maintenance notifications; asking for them
		// only adds a failing command and a log line to every connection.
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	switch {
	case s.cfg.aclUser != "":
		opt.Username = s.cfg.aclUser
		opt.Password = s.cfg.aclPass
	case s.cfg.password != "":
		opt.Password = s.cfg.password
	}
	if s.cfg.tls {
		tlsCfg, err := ClientTLSConfig(s.CAFile)
		if err != nil {
			s.t.Fatalf("redistest: %v", err)
		}
		opt.TLSConfig = tlsCfg
	}
	return opt
}

// Client returns a client for this server, closed when the test ends.
func (s *Server) Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(s.Options())
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func (s *Server) confPath() string {
	if s.sentinel {
		return filepath.Join(s.Dir, "sentinel.conf")
	}
	return filepath.Join(s.Dir, "redis.conf")
}

func (s *Server) writeConf() error {
	lines := []string{
		"bind 127.0.0.1",
		"dir " + s.Dir,
		"daemonize no",
		`logfile ""`,
	}
	if s.cfg.tls {
		lines = append(lines,
			"port 0",
			"tls-port "+strconv.Itoa(s.port),
			"tls-cert-file "+s.tls.CertFile,
			"tls-key-file "+s.tls.KeyFile,
			"tls-ca-cert-file "+s.tls.CAFile,
			"tls-auth-clients no",
		)
	} else {
		lines = append(lines, "port "+strconv.Itoa(s.port))
	}
	if !s.sentinel {
		// Persistence only when asked for: RDB snapshots would make Stop slow
		// and Restart keep data that tests did not expect.
		lines = append(lines, `save ""`)
		// Redis 7 waits 5 s by default before a diskless full sync, hoping
		// more replicas arrive; StartSentinel has exactly one.
		lines = append(lines, "repl-diskless-sync-delay 0")
		if s.cfg.appendOnly {
			lines = append(lines, "appendonly yes")
		}
		if s.cfg.appendFsync != "" {
			lines = append(lines, "appendfsync "+s.cfg.appendFsync)
		}
	}
	if s.cfg.password != "" {
		lines = append(lines, "requirepass "+s.cfg.password)
	}
	if s.cfg.aclUser != "" {
		lines = append(lines,
			"user default off",
			fmt.Sprintf("user %s on >%s ~* &* +@all", s.cfg.aclUser, s.cfg.aclPass),
		)
	}
	if s.cluster {
		lines = append(lines,
			"cluster-enabled yes",
			"cluster-config-file nodes.conf",
			"cluster-node-timeout 2000",
			"cluster-port "+strconv.Itoa(s.busPort),
		)
	}
	lines = append(lines, s.extraConf...)
	return os.WriteFile(s.confPath(), []byte(strings.Join(lines, "\n")+"\n"), 0o600)
}

var errPortInUse = errors.New("port already in use")

// launch runs the process and waits until it answers PING.
func (s *Server) launch() error {
	s.mu.Lock()
	logFile, err := os.OpenFile(filepath.Join(s.Dir, "redis.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	args := []string{s.confPath()}
	if s.sentinel {
		args = append(args, "--sentinel")
	}
	cmd := exec.Command("redis-server", args...)
	cmd.Dir = s.Dir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// Pdeathsig fires when the thread that forked the child exits; Go only
	// retires threads locked with LockOSThread, so in practice it fires when
	// the test binary dies, including on a panic or a timeout.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		s.mu.Unlock()
		_ = logFile.Close()
		return err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	s.cmd, s.done, s.logFile = cmd, done, logFile
	s.mu.Unlock()

	if err := s.waitReady(done); err != nil {
		s.Stop()
		tail := s.logTail()
		if strings.Contains(tail, "Address already in use") {
			return fmt.Errorf("%w: %s", errPortInUse, s.Addr)
		}
		return fmt.Errorf("%w\n--- last lines of %s ---\n%s", err, filepath.Join(s.Dir, "redis.log"), tail)
	}
	return nil
}

func (s *Server) waitReady(exited <-chan struct{}) error {
	opt := s.Options()
	opt.DialTimeout = 200 * time.Millisecond
	opt.MaxRetries = -1
	c := redis.NewClient(opt)
	defer c.Close()

	deadline := time.Now().Add(readyTimeout)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("redis-server on %s exited during start-up", s.Addr)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		lastErr = c.Ping(ctx).Err()
		cancel()
		if lastErr == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("redis-server on %s did not answer PING within %s: %v", s.Addr, readyTimeout, lastErr)
}

func (s *Server) logTail() string {
	data, err := os.ReadFile(filepath.Join(s.Dir, "redis.log"))
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > logTailLines {
		lines = lines[len(lines)-logTailLines:]
	}
	return strings.Join(lines, "\n")
}

func requireBinary(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("redistest: %s not found on PATH (%v): install it with `apt-get install redis-server`; "+
			"tests that need Redis fail rather than skip", name, err)
	}
}

// freePort asks the kernel for a free loopback port. The port is released
// before redis-server binds it, so start retries on a conflict.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("redistest: finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
