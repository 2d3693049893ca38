package testdrive

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

const (
	// redisPortAttempts covers another process taking the free port before
	// redis-server binds it.
	redisPortAttempts = 3
	redisReadyTimeout = 10 * time.Second
	redisStopTimeout  = 10 * time.Second
)

// localRedis is the Redis the testdrive starts when none is given.
type localRedis struct {
	Addr string
	// InProcess says it is miniredis, as no redis-server is installed.
	InProcess bool
	stop      func()
}

// Stop shuts it down and waits until it is gone.
func (r *localRedis) Stop() { r.stop() }

// startLocalRedis races the replicas on a real redis-server of its own, with
// its files in dir, and falls back to miniredis in this process only when no
// redis-server is installed.
func startLocalRedis(dir string) (*localRedis, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		mini := miniredis.NewMiniRedis()
		if err := mini.StartAddr("127.0.0.1:0"); err != nil {
			return nil, fmt.Errorf("starting the in-process Redis: %w", err)
		}
		return &localRedis{Addr: mini.Addr(), InProcess: true, stop: mini.Close}, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	var err error
	for range redisPortAttempts {
		var r *localRedis
		if r, err = launchRedisServer(dir); err == nil {
			return r, nil
		}
	}
	return nil, err
}

// launchRedisServer starts redis-server on a free loopback port and waits
// until it answers PING.
func launchRedisServer(dir string) (*localRedis, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	logPath := filepath.Join(dir, "redis.log")
	cmd := exec.Command("redis-server", // nolint: gosec
		"--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--dir", dir,
		"--save", "", "--appendonly", "no", "--logfile", logPath)
	// It dies with the testdrive, even if that is killed, and leads a process
	// group of its own so a Ctrl-C in the terminal reaches only the testdrive,
	// which still needs Redis to close the story's pull requests.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting redis-server: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait() // nolint: errcheck
		close(exited)
	}()
	stop := func() {
		cmd.Process.Signal(syscall.SIGTERM) // nolint: errcheck
		select {
		case <-exited:
		case <-time.After(redisStopTimeout):
			cmd.Process.Kill() // nolint: errcheck
			<-exited
		}
	}
	if err := waitRedisReady(addr, exited); err != nil {
		stop()
		return nil, fmt.Errorf("redis-server on %s: %w (its log: %s)", addr, err, logPath)
	}
	return &localRedis{Addr: addr, stop: stop}, nil
}

func waitRedisReady(addr string, exited <-chan struct{}) error {
	c := redis.NewClient(&redis.Options{
		Addr:        addr,
		DialTimeout: 200 * time.Millisecond,
		MaxRetries:  -1,
		// Asking Redis 7.0 for maintenance notifications only adds a failing
		// command and a log line.
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
	defer c.Close() // nolint: errcheck
	ctx, cancel := context.WithTimeout(context.Background(), redisReadyTimeout)
	defer cancel()
	for {
		err := c.Ping(ctx).Err()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return errors.New("exited while starting")
		case <-ctx.Done():
			return fmt.Errorf("no answer to PING within %s: %w", redisReadyTimeout, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
