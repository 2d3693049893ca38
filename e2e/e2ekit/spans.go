package e2ekit

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Span is one run of a plan or an apply of one project, from its first step
// to its last, as the workflow's own steps recorded it.
type Span struct {
	Pull    int
	Dir     string
	Command string // plan or apply
	// PID is the atlantis process that ran it.
	PID   int
	Start time.Time
	// End is zero for a run that never reached its last step: its replica
	// died, or it still runs.
	End time.Time
}

func (s Span) String() string {
	end := "(no end)"
	if !s.End.IsZero() {
		end = s.End.Format("15:04:05.000")
	}
	return fmt.Sprintf("#%d %s %s by pid %d from %s to %s", s.Pull, s.Dir, s.Command, s.PID, s.Start.Format("15:04:05.000"), end)
}

// ReadSpans reads the spans file of a Workflow, in the order the runs
// started. A missing file is no runs.
func ReadSpans(path string) ([]Span, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	type runKey struct {
		pull      int
		dir, what string
		pid       int
	}
	var spans []Span
	open := map[runKey]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 5 {
			return nil, fmt.Errorf("spans file %s: bad line %q: want <pull> <dir> <command>-<start|end> <unix ns> <pid>", path, line)
		}
		pull, errPull := strconv.Atoi(f[0])
		ns, errNS := strconv.ParseInt(f[3], 10, 64)
		pid, errPID := strconv.Atoi(f[4])
		what, edge, _ := strings.Cut(f[2], "-")
		if err := errors.Join(errPull, errNS, errPID); err != nil || (edge != "start" && edge != "end") {
			return nil, fmt.Errorf("spans file %s: bad line %q: %v", path, line, err)
		}
		k := runKey{pull, f[1], what, pid}
		at := time.Unix(0, ns)
		if edge == "start" {
			open[k] = len(spans)
			spans = append(spans, Span{Pull: pull, Dir: f[1], Command: what, PID: pid, Start: at})
			continue
		}
		i, ok := open[k]
		if !ok {
			return nil, fmt.Errorf("spans file %s: %q ends a run that did not start", path, line)
		}
		delete(open, k)
		spans[i].End = at
	}
	sort.SliceStable(spans, func(i, j int) bool { return spans[i].Start.Before(spans[j].Start) })
	return spans, nil
}

// Overlaps are the pairs of runs of one pull that overlapped in time, which
// the command lease forbids: a pull's commands share its checkout. A run
// with no end overlaps every later run of its pull; give it an end (its
// replica's death) before asking.
func Overlaps(spans []Span) [][2]Span {
	byPull := map[int][]Span{}
	for _, s := range spans {
		byPull[s.Pull] = append(byPull[s.Pull], s)
	}
	var out [][2]Span
	for _, runs := range byPull {
		sort.SliceStable(runs, func(i, j int) bool { return runs[i].Start.Before(runs[j].Start) })
		for i, a := range runs {
			for _, b := range runs[i+1:] {
				if a.End.IsZero() || b.Start.Before(a.End) {
					out = append(out, [2]Span{a, b})
				}
			}
		}
	}
	return out
}
