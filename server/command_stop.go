package server

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/runatlantis/atlantis/server/logging"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// Timings of stopping a command that lost its lease.
const (
	// stopScanInterval bounds how long a process started just as the lease
	// ran out (its step passed the fence a moment before) runs unstopped.
	stopScanInterval = 50 * time.Millisecond
	// stopGrace is how long Terraform gets after SIGINT to stop cleanly (it
	// releases its state lock) before SIGKILL.
	stopGrace = 10 * time.Second
)

// pullStopper stops the processes a command started for a pull: the git and
// Terraform runs of upstream's working directory, which is where two
// replicas' commands would collide. Upstream gives no way to cancel a
// running command, so its child processes are what can be stopped; the
// command itself then fails and returns.
type pullStopper struct {
	reposDir string
	logger   logging.SimpleLogging
	self     int
}

func newPullStopper(dataDir string, logger logging.SimpleLogging) *pullStopper {
	// upstream's working directory layout: <data-dir>/repos/<owner>/<repo>/<pull>/<workspace>;
	// /proc shows absolute paths.
	if abs, err := filepath.Abs(dataDir); err == nil {
		dataDir = abs
	}
	return &pullStopper{reposDir: filepath.Join(dataDir, "repos"), logger: logger, self: os.Getpid()}
}

// stopUntil signals this process's descendants working in the pull's
// directory, again and again, until returned is closed: a command that lost
// its lease may start another process before it notices it failed.
func (s *pullStopper) stopUntil(pull enhanced.PullRef, returned <-chan struct{}) {
	dir := filepath.Join(s.reposDir, pull.RepoFullName, strconv.Itoa(pull.Num))
	interrupted := map[int]time.Time{}
	tick := time.NewTicker(stopScanInterval)
	defer tick.Stop()
	for {
		for _, pid := range s.workingIn(dir) {
			first, seen := interrupted[pid]
			switch {
			case !seen:
				interrupted[pid] = time.Now()
				s.logger.Warn("enhanced locking: interrupting process %d of %s#%d, whose command lost its lease", pid, pull.RepoFullName, pull.Num)
				_ = syscall.Kill(pid, syscall.SIGINT)
			case time.Since(first) > stopGrace:
				s.logger.Warn("enhanced locking: killing process %d of %s#%d, still running %s after its interrupt", pid, pull.RepoFullName, pull.Num, stopGrace)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		select {
		case <-returned:
			return
		case <-tick.C:
		}
	}
}

// workingIn lists this process's descendants whose working directory or
// arguments lie in dir. It reads /proc, so it finds nothing where there is
// none: there the lease is still fenced through the adapter.
func (s *pullStopper) workingIn(dir string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	parents := map[int]int{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, ok := parentOf(pid); ok {
			parents[pid] = ppid
		}
	}
	var pids []int
	for pid := range parents {
		if pid != s.self && descends(pid, s.self, parents) && usesDir(pid, dir) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// parentOf reads a process's parent from /proc/<pid>/stat, whose second
// field (the command name, in parentheses) may itself hold spaces.
func parentOf(pid int) (int, bool) {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, false
	}
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 {
		return 0, false
	}
	fields := strings.Fields(string(stat[end+1:]))
	if len(fields) < 2 {
		return 0, false
	}
	ppid, err := strconv.Atoi(fields[1])
	return ppid, err == nil
}

func descends(pid, ancestor int, parents map[int]int) bool {
	for hops := 0; hops < len(parents); hops++ {
		ppid, ok := parents[pid]
		if !ok || ppid <= 1 {
			return false
		}
		if ppid == ancestor {
			return true
		}
		pid = ppid
	}
	return false
}

func usesDir(pid int, dir string) bool {
	proc := filepath.Join("/proc", strconv.Itoa(pid))
	if cwd, err := os.Readlink(filepath.Join(proc, "cwd")); err == nil && within(cwd, dir) {
		return true
	}
	cmdline, err := os.ReadFile(filepath.Join(proc, "cmdline"))
	if err != nil {
		return false
	}
	for _, arg := range bytes.Split(cmdline, []byte{0}) {
		if within(string(arg), dir) {
			return true
		}
	}
	return false
}

func within(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, dir+string(filepath.Separator))
}
