package chaos

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/atlantis-enhanced/atlantis/e2e/e2ekit"
	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
)

// opKind is what the suite sends for a pull: a comment (its body) or an
// event.
type opKind string

const (
	opPlan   opKind = "atlantis plan"
	opApply  opKind = "atlantis apply"
	opUnlock opKind = "atlantis unlock"
	opMerge  opKind = "merge"
)

// releases says whether the pull lets go of its lock (and of its queue
// places) when Atlantis handles the op.
func (k opKind) releases() bool { return k == opUnlock || k == opMerge }

// op is one webhook the suite sent.
type op struct {
	at      time.Time
	pull    int
	kind    opKind
	replica string
	// ok is whether the replica answered 200.
	ok bool
}

// unknownHolder is a sample taken while Redis did not answer.
const unknownHolder = -1

// sample is who held a lock by Redis: read between from and to.
type sample struct {
	from, to time.Time
	holder   int
}

// queuing is a pull told it waits in its project's queue: after the comment
// since (its refusal's predecessor), at at.
type queuing struct {
	pull  int
	since int64
	at    time.Time
}

// history is what happened in a scenario: the ops sent, the locks' holders
// as sampled from Redis, the pulls queued; with Atlantis's comments, which
// the GitHub stand-in keeps, it is checked by check.
type history struct {
	mu       sync.Mutex
	ops      []op
	dirs     map[int]string
	samples  map[string][]sample
	queuings []queuing
	notes    []string
}

func newHistory() *history {
	return &history{dirs: map[int]string{}, samples: map[string][]sample{}}
}

func (h *history) op(o op) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, o)
}

func (h *history) pullDir(pull int, dir string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dirs[pull] = dir
}

func (h *history) dirOf(pull int) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.dirs[pull]
}

// sample records dir's holder as read between from and now.
func (h *history) sample(dir string, holder int, from time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.samples[dir] = append(h.samples[dir], sample{from: from, to: time.Now(), holder: holder})
}

func (h *history) queued(pull int, since int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.queuings = append(h.queuings, queuing{pull: pull, since: since, at: time.Now()})
}

// note records something the traffic saw go wrong that is no fault by
// itself (a re-plan refused while Redis was away), for the log.
func (h *history) note(format string, args ...any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.notes = append(h.notes, fmt.Sprintf(format, args...))
}

// verdict is what check found. findings explain each count.
type verdict struct {
	operations, doubleGrants, lost, overlaps int
	findings                                 []string
	// notes are what the traffic saw that is no fault by itself.
	notes []string
	// What the traffic amounted to, for the log: ops Atlantis did not
	// answer 200, grants told, pulls queued, hand-overs announced.
	refused, grants, queued, handOvers int
}

func (v verdict) summary() string {
	return fmt.Sprintf("%d webhooks (%d not answered 200), %d grants told, %d pulls queued, %d hand-overs announced",
		v.operations, v.refused, v.grants, v.queued, v.handOvers)
}

func (v verdict) line(scenario string) string {
	return fmt.Sprintf("CHAOS %s operations=%d double-grants=%d lost=%d overlaps=%d",
		scenario, v.operations, v.doubleGrants, v.lost, v.overlaps)
}

func (v verdict) clean() bool { return v.doubleGrants == 0 && v.lost == 0 && v.overlaps == 0 }

// event is one step of a lock's life in time order: a pull told it holds it
// (a successful plan or a hand-over comment), a release sent, or a sample.
type event struct {
	at      time.Time
	pull    int
	grant   bool
	release bool
	sample  *sample
	what    string
}

// check replays the history of each lock and counts:
//
//   - double-grants: a pull told it holds a lock (a plan that ran, a
//     hand-over) while another pull told so earlier had not been sent a
//     release (unlock, merge), or Redis showing another pull holding it
//     meanwhile;
//   - lost: a lock whose holder was told it holds it that Redis shows free
//     or held by another pull, with no release sent in between; a pull told
//     it is queued that was never handed the lock; a hand-over announced
//     twice counts too, as a notice that was not delivered exactly once;
//   - overlaps: two runs of one pull's commands that overlapped in time, by
//     the workflow's own spans; a run whose replica was killed ends at the
//     kill, one that never ended overlaps everything after it.
//
// Releases count from when they were sent and grants from when Atlantis
// commented, so the replay never blames a hand-over on the release that
// caused it. A sample is compared only when no grant or release of its lock
// fell inside the interval in which Redis was read.
func (h *history) check(comments map[int][]vcssim.Comment, botUser string, spans []e2ekit.Span, deaths map[int]time.Time, end time.Time) verdict {
	h.mu.Lock()
	defer h.mu.Unlock()
	v := verdict{operations: len(h.ops), notes: append([]string(nil), h.notes...), queued: len(h.queuings)}

	byDir := map[string][]event{}
	for _, o := range h.ops {
		if !o.ok {
			v.refused++
		}
		if o.kind.releases() {
			d := h.dirs[o.pull]
			byDir[d] = append(byDir[d], event{at: o.at, pull: o.pull, release: true, what: fmt.Sprintf("%s to %s", o.kind, o.replica)})
		}
	}
	for pull, cs := range comments {
		d := h.dirs[pull]
		for _, c := range cs {
			if c.Author == botUser && e2ekit.IsHandedOver(c.Body) {
				v.handOvers++
			}
			if c.Author == botUser && (e2ekit.IsPlanned(c.Body) || e2ekit.IsHandedOver(c.Body)) {
				v.grants++
				first, _, _ := strings.Cut(c.Body, "\n")
				byDir[d] = append(byDir[d], event{at: c.CreatedAt, pull: pull, grant: true, what: fmt.Sprintf("%.60q", first)})
			}
		}
	}
	for d, ss := range h.samples {
		for i := range ss {
			byDir[d] = append(byDir[d], event{at: ss[i].to, sample: &ss[i]})
		}
	}
	for d, evs := range byDir {
		sort.SliceStable(evs, func(i, j int) bool { return evs[i].at.Before(evs[j].at) })
		h.replay(&v, d, evs)
	}
	h.checkQueuings(&v, comments, botUser)
	checkSpans(&v, spans, deaths, end)
	return v
}

// replay counts a lock's double grants and lost grants, as check says.
func (h *history) replay(v *verdict, dir string, evs []event) {
	var (
		told     int
		toldAt   time.Time
		toldWhat string
		reported bool
		lastStep time.Time
		finding  = func(format string, args ...any) {
			v.findings = append(v.findings, dir+": "+fmt.Sprintf(format, args...))
		}
		clockTime = func(t time.Time) string { return t.Format("15:04:05.000") }
	)
	for _, e := range evs {
		switch {
		case e.release:
			if told == e.pull {
				told = 0
			}
			lastStep = e.at
		case e.grant:
			if told != 0 && told != e.pull {
				v.doubleGrants++
				finding("#%d was told it holds the lock at %s (%s), and #%d at %s (%s), with no release sent for #%d between",
					told, clockTime(toldAt), toldWhat, e.pull, clockTime(e.at), e.what, told)
			}
			if told != e.pull {
				reported = false
			}
			told, toldAt, toldWhat, lastStep = e.pull, e.at, e.what, e.at
		default:
			s := e.sample
			if told == 0 || reported || s.holder == unknownHolder || s.holder == told || !s.from.After(lastStep) {
				continue
			}
			v.lost++
			reported = true
			now := "free"
			if s.holder != 0 {
				// Another pull holds the lock the told one still believes
				// it holds.
				v.doubleGrants++
				now = fmt.Sprintf("held by #%d", s.holder)
			}
			finding("#%d was told it holds the lock at %s (%s); Redis showed it %s at %s, with no release sent for #%d",
				told, clockTime(toldAt), toldWhat, now, clockTime(s.to), told)
		}
	}
}

// checkQueuings counts the pulls told they were queued that were not handed
// the lock exactly once before their next plan.
func (h *history) checkQueuings(v *verdict, comments map[int][]vcssim.Comment, botUser string) {
	for _, q := range h.queuings {
		next := time.Time{}
		for _, o := range h.ops {
			if o.pull == q.pull && o.kind == opPlan && o.at.After(q.at) && (next.IsZero() || o.at.Before(next)) {
				next = o.at
			}
		}
		handOvers := 0
		for _, c := range comments[q.pull] {
			if c.ID > q.since && c.Author == botUser && e2ekit.IsHandedOver(c.Body) && (next.IsZero() || c.CreatedAt.Before(next)) {
				handOvers++
			}
		}
		if handOvers != 1 {
			v.lost++
			v.findings = append(v.findings, fmt.Sprintf("%s: #%d was queued at %s and handed the lock %d times (want once)",
				h.dirs[q.pull], q.pull, q.at.Format("15:04:05.000"), handOvers))
		}
	}
}

// checkSpans counts the overlapping runs of one pull's commands.
func checkSpans(v *verdict, spans []e2ekit.Span, deaths map[int]time.Time, end time.Time) {
	for i, s := range spans {
		if !s.End.IsZero() {
			continue
		}
		if died, ok := deaths[s.PID]; ok {
			spans[i].End = died
			continue
		}
		spans[i].End = end
		v.findings = append(v.findings, fmt.Sprintf("%s: never ended though its replica lives", s))
	}
	for _, pair := range e2ekit.Overlaps(spans) {
		v.overlaps++
		v.findings = append(v.findings, fmt.Sprintf("#%d: %s overlapped %s", pair[0].Pull, pair[1], pair[0]))
	}
}
