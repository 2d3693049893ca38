// Package testdrive runs a small Atlantis fleet on one machine: replicas of
// the atlantis binary, a GitHub stand-in and Redis. The offline testdrive
// (`make run`, testdrive/cmd/atlantis-testdrive) and the end-to-end suites
// use it.
package testdrive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// ReplicaConfig is how to start one `atlantis server` process.
type ReplicaConfig struct {
	Name   string
	Binary string
	Port   int
	// Args are the server flags besides --port, which is added.
	Args []string
	// Env is added to this process's environment.
	Env []string
	// Log receives the replica's output, prefixed with its name; nil
	// discards it. The last lines are kept for errors either way.
	Log io.Writer
}

// Replica is a running `atlantis server`.
type Replica struct {
	cfg    ReplicaConfig
	URL    string
	cmd    *exec.Cmd
	exited chan struct{}
	tail   *tailBuffer
}

// StartReplica starts the process and waits until /healthz answers.
func StartReplica(ctx context.Context, cfg ReplicaConfig) (*Replica, error) {
	r := &Replica{
		cfg:    cfg,
		URL:    fmt.Sprintf("http://127.0.0.1:%d", cfg.Port),
		exited: make(chan struct{}),
		tail:   &tailBuffer{max: 64 << 10},
	}
	args := append([]string{"server", "--port=" + strconv.Itoa(cfg.Port)}, cfg.Args...)
	r.cmd = exec.Command(cfg.Binary, args...) // nolint: gosec
	r.cmd.Env = append(os.Environ(), cfg.Env...)
	out := io.Writer(r.tail)
	if cfg.Log != nil {
		out = io.MultiWriter(r.tail, &prefixWriter{prefix: "[" + cfg.Name + "] ", w: cfg.Log})
	}
	r.cmd.Stdout, r.cmd.Stderr = out, out
	// The replica dies with whoever started it, even if that is killed. It
	// leads a process group of its own, with the Terraform and shell runs it
	// starts, so Pause and Kill reach them as a stalled or lost node would.
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := r.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", cfg.Name, err)
	}
	go func() {
		r.cmd.Wait() // nolint: errcheck
		close(r.exited)
	}()
	if err := r.waitHealthy(ctx); err != nil {
		r.Kill()
		return nil, fmt.Errorf("%s did not become healthy: %w\n--- last output of %s ---\n%s", cfg.Name, err, cfg.Name, r.tail.String())
	}
	return r, nil
}

func (r *Replica) waitHealthy(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		select {
		case <-r.exited:
			return errors.New("process exited")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		resp, err := http.Get(r.URL + "/healthz") // nolint: gosec, noctx
		if err == nil {
			resp.Body.Close() // nolint: errcheck
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
	}
}

// Name is the replica's name in logs.
func (r *Replica) Name() string { return r.cfg.Name }

// PID is the process id, for telling apart what each process did.
func (r *Replica) PID() int { return r.cmd.Process.Pid }

// Output is the replica's recent output.
func (r *Replica) Output() string { return r.tail.String() }

// Stop asks the replica to drain and exit, and kills it after 15s.
func (r *Replica) Stop() {
	select {
	case <-r.exited:
		return
	default:
	}
	r.cmd.Process.Signal(syscall.SIGTERM) // nolint: errcheck
	// A paused replica acts on the signal only once it runs again.
	r.Resume() // nolint: errcheck
	select {
	case <-r.exited:
	case <-time.After(15 * time.Second):
		r.Kill()
	}
}

// Kill ends the replica and every process it started at once, as the loss
// of its node would.
func (r *Replica) Kill() {
	syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL) // nolint: errcheck
	<-r.exited
}

// Running says whether the process has not exited.
func (r *Replica) Running() bool {
	select {
	case <-r.exited:
		return false
	default:
		return true
	}
}

// Pause freezes the replica and the processes it started (SIGSTOP to its
// process group) as a stalled node or a paused VM would: its connections stay
// open and nothing it would do happens until Resume.
func (r *Replica) Pause() error {
	return syscall.Kill(-r.cmd.Process.Pid, syscall.SIGSTOP)
}

// Resume lets a paused replica and its processes go on (SIGCONT).
func (r *Replica) Resume() error {
	return syscall.Kill(-r.cmd.Process.Pid, syscall.SIGCONT)
}

// Pid is the replica's process id, which is also its process group's.
func (r *Replica) Pid() int { return r.cmd.Process.Pid }

// FreePort asks the kernel for a free loopback port.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close() // nolint: errcheck
	return l.Addr().(*net.TCPAddr).Port, nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = t.buf[len(t.buf)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// prefixWriter prefixes each line, so interleaved replica logs stay readable.
type prefixWriter struct {
	mu     sync.Mutex
	prefix string
	w      io.Writer
	line   []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.line = append(p.line, b...)
	for {
		i := bytes.IndexByte(p.line, '\n')
		if i < 0 {
			return len(b), nil
		}
		if _, err := fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.line[:i]); err != nil {
			return 0, err
		}
		p.line = p.line[i+1:]
	}
}
