package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
	"github.com/atlantis-enhanced/atlantis/testdrive"
)

// Timings of the frozen replica: its lease runs out long before it wakes,
// while the other replica runs the pull's next command.
const (
	frozenLeaseTTL = 4 * time.Second
	frozenFor      = 12 * time.Second
	// frozenFirstStep is how long the workflow's first step sleeps: the
	// replica is frozen inside it.
	frozenFirstStep = 6 * time.Second
)

// TestFrozenReplicaChangesNothing freezes the process group of a replica
// (SIGSTOP, as a stalled node or a paused VM) in the first step of a plan,
// past its command lease, while the other replica is granted the lease and
// plans the same pull. Once woken, the frozen replica must change nothing for
// the pull: start no process, post no comment or commit status, hide no
// comment, write no lock or pull status in Redis, and leave the other
// replica's plan file alone. Every witness is outside Atlantis: the
// processes' own records, the GitHub stand-in's record of who called it, and
// the commands each replica sent to Redis through its proxy.
func TestFrozenReplicaChangesNothing(t *testing.T) {
	spans := filepath.Join(t.TempDir(), "spans")
	h := newHarness(t, harnessOptions{
		extraArgs: []string{
			"--enhanced-locking-command-lease-ttl=" + frozenLeaseTTL.String(),
			"--repo-config-json=" + frozenWorkflowConfig(t, spans),
		},
		terraformDir: recordingTerraform(t, spans),
		recordRedis:  true,
		timeout:      3 * time.Minute,
	})
	h.logs.keepLines(leaseLogMarker)
	frozen, other := h.r1, h.r2
	pr := h.openPR(1)

	h.comment(frozen, pr, "atlantis plan")
	h.eventually("the frozen replica's first step to start", func() (bool, string) {
		return len(spansOf(t, spans, frozen.Name(), "step-start")) > 0, "not yet"
	})
	time.Sleep(300 * time.Millisecond)
	Ok(t, frozen.Pause())
	pausedAt := time.Now()
	t.Cleanup(func() { _ = frozen.Resume() })

	m, _ := h.comment(other, pr, "atlantis plan")
	h.eventually("the other replica to be granted the lease and start", func() (bool, string) {
		return len(spansOf(t, spans, other.Name(), "step-start")) > 0, "not yet"
	})
	time.Sleep(time.Until(pausedAt.Add(frozenFor)))
	Ok(t, frozen.Resume())
	wokeAt := time.Now()

	ctx, cancel := context.WithTimeout(h.ctx, waitTimeout)
	defer cancel()
	planned, err := h.sim.WaitForComment(ctx, repoFull, pr.Number, func(c vcssim.Comment) bool {
		return c.ID > m.commentID && c.Client == other.Name()
	})
	Ok(t, err)
	Assert(t, isPlanned(planned.Body), "the other replica's plan failed:\n%s", planned.Body)
	h.eventually("the frozen replica's command to return", func() (bool, string) {
		runs, unfinished := commandRuns(t, h.logs.keptLines(), pr.Number)
		for _, r := range runs {
			if strings.HasPrefix(r.what, "["+frozen.Name()+"]") {
				return true, ""
			}
		}
		return false, fmt.Sprintf("running: %v", unfinished)
	})
	h.waitDone(pr, m, "atlantis/plan")
	// Whatever the woken replica would still do after its command returned.
	time.Sleep(2 * time.Second)

	var acts []string
	for _, s := range spansOf(t, spans, frozen.Name(), "") {
		if s.at.After(wokeAt) {
			acts = append(acts, fmt.Sprintf("started %s at +%s", s.what, s.at.Sub(wokeAt).Round(time.Millisecond)))
		}
	}
	for _, c := range h.sim.Comments(repoFull, pr.Number) {
		if c.Client == frozen.Name() && c.CreatedAt.After(wokeAt) {
			acts = append(acts, fmt.Sprintf("commented %.80q", c.Body))
		}
		if c.MinimizedBy == frozen.Name() && c.ID >= planned.ID {
			acts = append(acts, fmt.Sprintf("hid the other replica's comment %d", c.ID))
		}
	}
	for _, st := range h.sim.Statuses(repoFull, pr.HeadSHA) {
		if st.Client == frozen.Name() && st.CreatedAt.After(wokeAt) {
			acts = append(acts, fmt.Sprintf("set %s to %s", st.Context, st.State))
		}
	}
	for _, c := range h.redisProxies[0].Commands() {
		if c.At.After(wokeAt) && writesPull(c.Args, pr.Number) {
			acts = append(acts, fmt.Sprintf("sent Redis %.120q", c.Args))
		}
	}
	otherEnd := spansOf(t, spans, other.Name(), "step-end")
	Assert(t, len(otherEnd) == 1, "the other replica's plan recorded %d ends", len(otherEnd))
	for _, plan := range planFiles(t, h.dataDir, pr.Number) {
		if plan.ModTime().After(otherEnd[0].at) {
			acts = append(acts, fmt.Sprintf("wrote %s after the other replica's plan ended", plan.Name()))
		}
	}
	// The pull's lock, taken by both plans, stays the pull's: a woken
	// replica that released it would lose it, and no other pull may hold it.
	lost, doubleGrants := 0, 0
	switch holder := h.lockHolder(); holder {
	case pr.Number:
	case 0:
		lost = 1
	default:
		doubleGrants = 1
	}
	fmt.Printf("CHAOS frozen-replica operations=2 double-grants=%d lost=%d overlaps=%d\n", doubleGrants, lost, len(acts))
	Equals(t, 0, lost+doubleGrants)
	Assert(t, len(acts) == 0, "the replica frozen past its lease acted for the pull after it woke (+%s after the freeze):\n  %s",
		wokeAt.Sub(pausedAt).Round(time.Millisecond), strings.Join(acts, "\n  "))
	h.checkRedisConsistent()
}

// frozenWorkflowConfig is a server-side repo config whose plan workflow first
// records its start and sleeps, then runs Terraform, then records its end;
// each record names the replica that ran the step.
func frozenWorkflowConfig(t *testing.T, spans string) string {
	t.Helper()
	mark := func(what string) string {
		return `echo "` + what + ` $` + testdrive.ReplicaEnv + ` $(date +%s%N)" >> '` + spans + `'`
	}
	cfg := map[string]any{
		"repos": []any{map[string]any{"id": "/.*/", "workflow": "frozen"}},
		"workflows": map[string]any{
			"frozen": map[string]any{
				"plan": map[string]any{"steps": []any{
					map[string]any{"run": mark("step-start") + " && sleep " + strconv.Itoa(int(frozenFirstStep.Seconds()))},
					"init", "plan",
					map[string]any{"run": mark("step-end")},
				}},
			},
		},
	}
	b, err := json.Marshal(cfg)
	Ok(t, err)
	return string(b)
}

// recordingTerraform returns a directory whose terraform records each run,
// with the replica that started it, in spans, then runs the real one.
func recordingTerraform(t *testing.T, spans string) string {
	t.Helper()
	dir := t.TempDir()
	script := "#!/bin/sh\n" +
		`echo "terraform-$1 $` + testdrive.ReplicaEnv + ` $(date +%s%N)" >> '` + spans + "'\n" +
		`exec '` + filepath.Join(terraformDir, "terraform") + `' "$@"` + "\n"
	Ok(t, os.WriteFile(filepath.Join(dir, "terraform"), []byte(script), 0o755)) // nolint: gosec
	return dir
}

// span is one record of a process start.
type span struct {
	what string
	at   time.Time
}

// spansOf reads the records replica wrote whose name starts with prefix.
func spansOf(t *testing.T, spans, replica, prefix string) []span {
	t.Helper()
	f, err := os.Open(spans) // nolint: gosec
	if os.IsNotExist(err) {
		return nil
	}
	Ok(t, err)
	defer f.Close() // nolint: errcheck
	var out []span
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 3 || fields[1] != replica || !strings.HasPrefix(fields[0], prefix) {
			continue
		}
		ns, err := strconv.ParseInt(fields[2], 10, 64)
		Ok(t, err)
		out = append(out, span{what: fields[0], at: time.Unix(0, ns)})
	}
	Ok(t, sc.Err())
	return out
}

// writesPull says whether a command a replica sent Redis writes the pull's
// project lock or its pull status (upstream's "<host>::<repo>::<number>").
func writesPull(args []string, pullNum int) bool {
	switch strings.ToUpper(args[0]) {
	case "GET", "MGET", "EXISTS", "TTL", "PTTL", "SCAN", "HGET", "HGETALL", "SMEMBERS", "PING", "EVALSHA_RO", "EVAL_RO":
		return false
	}
	status := fmt.Sprintf("::%s::%d", repoFull, pullNum)
	for _, a := range args[1:] {
		if a == lockKey || strings.HasSuffix(a, status) {
			return true
		}
	}
	return false
}

// planFiles are the plan files in the pull's working directories.
func planFiles(t *testing.T, dataDir string, pullNum int) []os.FileInfo {
	t.Helper()
	var out []os.FileInfo
	root := filepath.Join(dataDir, "repos", repoFull, strconv.Itoa(pullNum))
	err := filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
		if err == nil && strings.HasSuffix(path, ".tfplan") {
			out = append(out, info)
		}
		return err
	})
	Ok(t, err)
	return out
}
