package testdrive

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	. "github.com/runatlantis/atlantis/testing"
)

// TestStartLocalRedis: where redis-server is installed the testdrive runs on
// one of its own, and on miniredis only where none is; Stop leaves nothing
// listening.
func TestStartLocalRedis(t *testing.T) {
	for _, c := range []struct {
		name      string
		path      string
		inProcess bool
	}{
		{"redis-server installed", os.Getenv("PATH"), false},
		{"none installed", t.TempDir(), true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("PATH", c.path)
			r, err := startLocalRedis(filepath.Join(t.TempDir(), "redis"))
			Ok(t, err)
			Equals(t, c.inProcess, r.InProcess)
			ctx := context.Background()
			client := redis.NewClient(&redis.Options{Addr: r.Addr})
			defer client.Close() // nolint: errcheck
			Ok(t, client.Set(ctx, "k", "v", 0).Err())
			if !c.inProcess {
				pid, err := redisPid(ctx, client)
				Ok(t, err)
				Assert(t, pid != os.Getpid(), "redis-server runs in the testdrive's own process %d", pid)
			}
			r.Stop()
			conn, err := net.DialTimeout("tcp", r.Addr, time.Second)
			if err == nil {
				conn.Close() // nolint: errcheck
			}
			Assert(t, err != nil, "something still listens on %s after Stop", r.Addr)
		})
	}
}

// TestLocalRedisDiesWithTheTestdrive: a testdrive that is killed leaves no
// redis-server behind.
func TestLocalRedisDiesWithTheTestdrive(t *testing.T) {
	child := exec.Command(os.Args[0], "-test.run=^TestHelperLocalRedis$") // nolint: gosec
	child.Env = append(os.Environ(), helperEnv+"="+t.TempDir())
	out, err := child.StdoutPipe()
	Ok(t, err)
	Ok(t, child.Start())
	t.Cleanup(func() {
		child.Process.Kill() // nolint: errcheck
		child.Wait()         // nolint: errcheck
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	Ok(t, err)
	addr := strings.TrimSpace(line)

	ctx := context.Background()
	client := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer client.Close() // nolint: errcheck
	pid, err := redisPid(ctx, client)
	Ok(t, err)
	Ok(t, child.Process.Kill())
	child.Wait() // nolint: errcheck

	// The kernel sends SIGKILL to redis-server as its parent dies; the
	// deadline only bounds a broken run.
	deadline := time.Now().Add(time.Minute)
	for processExists(pid) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	Assert(t, !processExists(pid), "redis-server (pid %d) outlived the testdrive that started it", pid)
}

const helperEnv = "ATLANTIS_TESTDRIVE_REDIS_HELPER"

// TestHelperLocalRedis is the killed testdrive of the test above: it starts
// its Redis, prints the address and waits to be killed.
func TestHelperLocalRedis(t *testing.T) {
	dir := os.Getenv(helperEnv)
	if dir == "" {
		return
	}
	r, err := startLocalRedis(dir)
	Ok(t, err)
	Assert(t, !r.InProcess, "no redis-server on PATH")
	fmt.Println(r.Addr)
	select {}
}

// redisPid is the process id the Redis server reports.
func redisPid(ctx context.Context, c *redis.Client) (int, error) {
	info, err := c.Info(ctx, "server").Result()
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "process_id:"); ok {
			return strconv.Atoi(v)
		}
	}
	return 0, fmt.Errorf("INFO server names no process_id:\n%s", info)
}

// processExists says whether pid is a live process: a zombie, dead but not
// yet reaped by its new parent, counts as gone.
func processExists(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	return len(fields) > 0 && fields[0] != "Z"
}
