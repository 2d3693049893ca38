package load

import (
	"fmt"
	"math"
	"time"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// The checker claims a violation only when the timestamps make it certain:
// every event is placed by the interval of the call that saw it, on one
// monotonic clock, and Redis's own times (a hand-over's, an entry's arrival)
// are compared with each other, or placed on that clock within the offsets
// the processes measured.

// checkInput is a run's history and what the run saw after it.
type checkInput struct {
	Records   []record
	AgingStep time.Duration
	// Queued are the entries still in a queue when the run ended, by ID.
	Queued map[string]bool
	// Undelivered counts the notices left in the outbox when the run ended.
	Undelivered int
}

// verdict is what the checker found.
type verdict struct {
	Ops, Handovers int
	// Grants counts the grant intervals compared; Waiting the entries
	// certainly queued at a hand-over, whose rank was compared.
	Grants, Waiting    int
	DoubleGrants       int
	OrderViolations    int
	LostHandovers      int
	DuplicateHandovers int
	Anomalies          int
	// Errors counts the lock operations that failed.
	Errors int
	// Problems describes the violations, one line each.
	Problems []string
	// Acquire is how long each plan that got its lock took; Handover is from
	// each hand-over in Redis to its comment, Claimed to its first claim.
	Acquire, Handover, Claimed []time.Duration
}

func (v verdict) violations() int {
	return v.DoubleGrants + v.OrderViolations + v.LostHandovers + v.DuplicateHandovers + v.Anomalies
}

const forever = math.MaxInt64

// span is a call's interval; End is forever when its effect may come later.
type span struct{ Start, End int64 }

func callSpan(r record) span {
	if r.Unknown {
		return span{r.Start, forever}
	}
	return span{r.Start, r.End}
}

type pullKey struct {
	pull int
	key  string
}

// notice is a hand-over or expiry as its claims and deliveries showed it.
type notice struct {
	claim    record // the first claim
	claimEnd int64  // the first claim's end
	comments []int64
	acks     []int64
	replans  int
}

// history indexes a run's records for the checks.
type history struct {
	in      checkInput
	offLo   int64 // wall - monotonic, lowest and highest measured
	offHi   int64
	clocked bool

	ops      []record             // lock operations
	byPK     map[pullKey][]record // lock operations by pull and lock
	ends     map[pullKey][]span   // releases that end the pull's grants on the lock
	keyEnds  map[string][]span    // releases of unknown outcome that may end any grant on the lock
	pullEnds map[int][]span       // closes, which end every grant of the pull
	closes   map[int][]record     // closes by pull
	entries  map[string]record    // queue entries by ID, as first seen
	byKey    map[string][]record  // queue entries by lock
	left     map[string]record    // entries that left their queue by their pull's close
	notices  map[string]*notice   // notices by ID
	byEntry  map[string][]string  // notice IDs by entry ID
	replans  map[pullKey]int      // re-plans the Planner was asked for
	v        verdict
}

func newHistory(in checkInput) *history {
	h := &history{
		in:       in,
		byPK:     map[pullKey][]record{},
		ends:     map[pullKey][]span{},
		keyEnds:  map[string][]span{},
		pullEnds: map[int][]span{},
		closes:   map[int][]record{},
		entries:  map[string]record{},
		byKey:    map[string][]record{},
		left:     map[string]record{},
		notices:  map[string]*notice{},
		byEntry:  map[string][]string{},
		replans:  map[pullKey]int{},
		offLo:    math.MaxInt64,
		offHi:    math.MinInt64,
	}
	for _, r := range in.Records {
		h.add(r)
	}
	return h
}

func (h *history) add(r record) {
	pk := pullKey{r.Pull, r.Key}
	switch r.Kind {
	case kindPlan, kindReplan:
		h.ops = append(h.ops, r)
		h.byPK[pk] = append(h.byPK[pk], r)
	case kindUnlockOwned:
		h.ops = append(h.ops, r)
		h.ends[pk] = append(h.ends[pk], callSpan(r))
	case kindUnlock:
		h.ops = append(h.ops, r)
		switch {
		case r.Err != "":
			h.keyEnds[r.Key] = append(h.keyEnds[r.Key], callSpan(r))
		case r.Holder != 0:
			h.ends[pullKey{r.Holder, r.Key}] = append(h.ends[pullKey{r.Holder, r.Key}], callSpan(r))
		}
	case kindClose:
		h.ops = append(h.ops, r)
		h.pullEnds[r.Pull] = append(h.pullEnds[r.Pull], callSpan(r))
		h.closes[r.Pull] = append(h.closes[r.Pull], r)
	case kindQueued:
		if _, seen := h.entries[r.Entry]; !seen {
			h.entries[r.Entry] = r
			h.byKey[r.Key] = append(h.byKey[r.Key], r)
		}
	case kindLeft:
		h.left[r.Entry] = r
	case kindClaim:
		n := h.notice(r.Notice)
		if n.claimEnd == 0 {
			n.claim, n.claimEnd = r, r.End
			h.byEntry[r.Entry] = append(h.byEntry[r.Entry], r.Notice)
		}
		n.claimEnd = min(n.claimEnd, r.End)
	case kindCommented:
		h.notice(r.Notice).comments = append(h.notice(r.Notice).comments, r.Start)
	case kindAck:
		if r.Err == "" {
			h.notice(r.Notice).acks = append(h.notice(r.Notice).acks, r.Start)
		}
	case kindMark:
		if r.Err == "" && r.Step == string(enhanced.StepReplanned) {
			h.notice(r.Notice).replans++
		}
	case kindReplanned:
		h.replans[pk]++
	case kindClock:
		h.clocked = true
		h.offLo = min(h.offLo, r.Wall-r.End)
		h.offHi = max(h.offHi, r.Wall-r.Start)
	case kindAnomaly:
		h.v.Anomalies++
		h.problem("recorder anomaly in process %d: %s", r.Proc, r.Err)
	}
}

func (h *history) notice(id string) *notice {
	n := h.notices[id]
	if n == nil {
		n = &notice{}
		h.notices[id] = n
	}
	return n
}

const maxProblems = 20

func (h *history) problem(format string, args ...any) {
	if len(h.v.Problems) < maxProblems {
		h.v.Problems = append(h.v.Problems, fmt.Sprintf(format, args...))
	}
}

// check runs every check on a history.
func check(in checkInput) verdict {
	h := newHistory(in)
	for _, r := range h.ops {
		if r.Kind != kindReplan {
			h.v.Ops++
		}
		if r.Err != "" {
			h.v.Errors++
			h.problem("%s by pull %d on lock %s failed: %s", r.Kind, r.Pull, r.Key, r.Err)
		}
		if r.Kind == kindPlan && r.Acquired {
			h.v.Acquire = append(h.v.Acquire, time.Duration(r.End-r.Start))
		}
	}
	h.checkGrants()
	h.checkOrder()
	h.checkDeliveries()
	return h.v
}

// handedAt bounds, on the monotonic clock, the instant of a hand-over Redis
// timed at atMs (its wall clock, truncated to the ms): from lo to hi. Without
// clock samples nothing is known.
func (h *history) handedAt(atMs int64) (lo, hi int64) {
	if !h.clocked {
		return math.MinInt64, forever
	}
	return atMs*int64(time.Millisecond) - h.offHi, (atMs+1)*int64(time.Millisecond) - h.offLo
}
