package load

import (
	"strings"
	"testing"
	"time"

	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// Hand-made histories, in ms on the monotonic clock; Redis's wall clock runs
// wallOffset ahead of it, as the clock sample in each history says.
const (
	ms         = int64(time.Millisecond)
	wallOffset = 1_700_000_000_000 * ms
)

// redisMs is Redis's time, in ms, at monotonic ms t.
func redisMs(t int64) int64 { return (t*ms + wallOffset) / ms }

func clockSample() record {
	return record{Kind: kindClock, Start: 0, End: 0, Wall: wallOffset}
}

func op(kind string, pull int, key string, start, end int64) record {
	return record{Kind: kind, Pull: pull, Key: key, Start: start * ms, End: end * ms}
}

func acquired(pull int, key string, start, end int64) record {
	r := op(kindPlan, pull, key, start, end)
	r.Acquired = true
	return r
}

func released(kind string, pull int, key string, start, end int64, holder int) record {
	r := op(kind, pull, key, start, end)
	r.Holder = holder
	return r
}

func closed(pull int, start, end int64, keys ...string) record {
	r := op(kindClose, pull, "", start, end)
	r.Keys = keys
	return r
}

// queued is pull's entry id for key, entered at monotonic ms t.
func queued(pull int, key, id string, t int64, prio enhanced.Priority) record {
	r := op(kindQueued, pull, key, t, t)
	r.Entry, r.Joined, r.Priority = id, true, int(prio)
	r.EnqueuedMs, r.ExpiresMs = redisMs(t), redisMs(t)+3_600_000
	return r
}

// handedOver is the notice of entry id (pull's, entered at enq) handed the
// lock at monotonic ms t, claimed just after.
func handedOver(id string, pull int, key string, enq, t int64, prio enhanced.Priority) record {
	r := op(kindClaim, pull, key, t+1, t+2)
	r.Notice, r.NoticeKind, r.Entry = "transferred:"+id, string(enhanced.NoticeTransferred), id
	r.AtMs, r.EnqueuedMs, r.Priority = redisMs(t), redisMs(enq), int(prio)
	return r
}

func delivery(kind, id string, pull int, key string, t int64) record {
	r := op(kind, pull, key, t, t)
	r.Notice = "transferred:" + id
	if kind == kindMark {
		r.Step = string(enhanced.StepReplanned)
	}
	return r
}

// delivered is the whole delivery of entry id's hand-over from t: comment,
// re-plan mark, the Planner's call, its TryLock, the acknowledgement.
func delivered(id string, pull int, key string, t int64) []record {
	return []record{
		delivery(kindCommented, id, pull, key, t),
		delivery(kindMark, id, pull, key, t+1),
		op(kindReplanned, pull, key, t+2, t+2),
		func() record { r := acquired(pull, key, t+2, t+3); r.Kind = kindReplan; return r }(),
		delivery(kindAck, id, pull, key, t+4),
	}
}

// pull1Releases is pull 1 holding lock p1, then releasing it at 10 ms.
var pull1Releases = []record{acquired(1, "p1", 0, 1), released(kindUnlockOwned, 1, "p1", 10, 12, 1)}

// toPull2 is pull 2 queueing for p1 at 5 ms and being handed it at 11 ms.
var toPull2 = []record{
	queued(2, "p1", "e2", 5, enhanced.PriorityNormal),
	handedOver("e2", 2, "p1", 5, 11, enhanced.PriorityNormal),
}

func left(pull int, key, id string, t int64) record {
	r := op(kindLeft, pull, key, t, t)
	r.Entry = id
	return r
}

func events(parts ...any) []record {
	rs := []record{clockSample()}
	for _, p := range parts {
		switch p := p.(type) {
		case record:
			rs = append(rs, p)
		case []record:
			rs = append(rs, p...)
		}
	}
	return rs
}

func TestCheck(t *testing.T) {
	cases := []struct {
		name        string
		records     []record
		queued      []string
		undelivered int
		want        verdict // counts only
		problem     string
	}{
		{
			name: "a release, then another pull's grant",
			records: events(
				acquired(1, "p1", 0, 1),
				released(kindUnlockOwned, 1, "p1", 2, 3, 1),
				acquired(2, "p1", 4, 5),
			),
		},
		{
			name: "two pulls granted one lock",
			records: events(
				acquired(1, "p1", 0, 1),
				acquired(2, "p1", 4, 5),
			),
			want:    verdict{DoubleGrants: 1},
			problem: "double grant: lock p1 held by pull 1",
		},
		{
			name: "a grant during a release that may have come after it is not certain",
			records: events(
				acquired(1, "p1", 0, 1),
				released(kindUnlockOwned, 1, "p1", 2, 8, 1),
				acquired(2, "p1", 4, 5),
			),
		},
		{
			name: "a grant racing the release's call is not certain either",
			records: events(
				acquired(1, "p1", 0, 5),
				released(kindUnlockOwned, 1, "p1", 2, 3, 1),
				acquired(2, "p1", 4, 6),
			),
		},
		{
			name: "an unlock that released another pull ends nobody else's grant",
			records: events(
				acquired(1, "p1", 0, 1),
				released(kindUnlock, 0, "p1", 2, 3, 2),
				acquired(2, "p1", 4, 5),
			),
			want: verdict{DoubleGrants: 1},
		},
		{
			name: "a failed unlock may have ended any grant",
			records: events(
				acquired(1, "p1", 0, 1),
				func() record { r := op(kindUnlock, 0, "p1", 2, 3); r.Err = "timeout"; r.Unknown = true; return r }(),
				acquired(2, "p1", 4, 5),
			),
		},
		{
			name: "a close ends its pull's grants",
			records: events(
				acquired(1, "p1", 0, 1),
				closed(1, 2, 3, "p1"),
				acquired(2, "p1", 4, 5),
			),
		},
		{
			name: "a hand-over by an unlock of the lock, delivered once",
			records: events(
				acquired(1, "p1", 0, 1),
				queued(2, "p1", "e2", 5, enhanced.PriorityNormal),
				released(kindUnlock, 0, "p1", 10, 12, 1),
				handedOver("e2", 2, "p1", 5, 11, enhanced.PriorityNormal),
				delivered("e2", 2, "p1", 14),
			),
		},
		{
			name:    "a hand-over while the lock's holder never let go",
			records: events(acquired(1, "p1", 0, 1), toPull2, delivered("e2", 2, "p1", 14)),
			want:    verdict{DoubleGrants: 1},
			problem: "double grant: lock p1 held by pull 1",
		},
		{
			name:    "a hand-over past an older entry of the same priority",
			records: events(pull1Releases, queued(3, "p1", "e3", 2, enhanced.PriorityNormal), toPull2, delivered("e2", 2, "p1", 14)),
			queued:  []string{"e3"},
			want:    verdict{OrderViolations: 1},
			problem: "queue order: lock p1 was handed to pull 2 (normal",
		},
		{
			name:    "a hand-over past an older entry of a lower priority",
			records: events(pull1Releases, queued(3, "p1", "e3", 2, enhanced.PriorityLow), toPull2, delivered("e2", 2, "p1", 14)),
			queued:  []string{"e3"},
		},
		{
			name:    "a hand-over past a younger entry of a higher priority",
			records: events(pull1Releases, toPull2, queued(3, "p1", "e3", 7, enhanced.PriorityHigh), delivered("e2", 2, "p1", 14)),
			queued:  []string{"e3"},
			want:    verdict{OrderViolations: 1},
			problem: "while pull 3 (high",
		},
		{
			name: "an older entry whose pull closed before the hand-over was claimed",
			records: events(pull1Releases, queued(3, "p1", "e3", 2, enhanced.PriorityNormal), toPull2, delivered("e2", 2, "p1", 14),
				closed(3, 9, 13), left(3, "p1", "e3", 10)),
		},
		{
			name: "an older entry whose pull closed after the hand-over was claimed",
			records: events(pull1Releases, queued(3, "p1", "e3", 2, enhanced.PriorityNormal), toPull2, delivered("e2", 2, "p1", 14),
				closed(3, 20, 22), left(3, "p1", "e3", 21)),
			want: verdict{OrderViolations: 1},
		},
		{
			name: "an older entry handed the lock first",
			records: events(
				acquired(1, "p1", 0, 1),
				queued(3, "p1", "e3", 2, enhanced.PriorityNormal),
				queued(2, "p1", "e2", 5, enhanced.PriorityNormal),
				released(kindUnlockOwned, 1, "p1", 10, 12, 1),
				handedOver("e3", 3, "p1", 2, 11, enhanced.PriorityNormal),
				delivered("e3", 3, "p1", 14),
				released(kindUnlockOwned, 3, "p1", 30, 32, 3),
				handedOver("e2", 2, "p1", 5, 31, enhanced.PriorityNormal),
				delivered("e2", 2, "p1", 34),
			),
		},
		{
			name:    "a hand-over commented twice",
			records: events(pull1Releases, toPull2, delivered("e2", 2, "p1", 14), delivery(kindCommented, "e2", 2, "p1", 20)),
			want:    verdict{DuplicateHandovers: 1},
			problem: "commented 2 times",
		},
		{
			name:    "a hand-over re-planned twice",
			records: events(pull1Releases, toPull2, delivered("e2", 2, "p1", 14), op(kindReplanned, 2, "p1", 20, 20)),
			want:    verdict{DuplicateHandovers: 1},
			problem: "re-planned lock p1 2 times for 1 hand-over",
		},
		{
			name: "a hand-over marked re-planned, never re-planned",
			records: events(pull1Releases, toPull2, delivery(kindCommented, "e2", 2, "p1", 14),
				delivery(kindMark, "e2", 2, "p1", 15), delivery(kindAck, "e2", 2, "p1", 16)),
			want:    verdict{LostHandovers: 1},
			problem: "re-planned lock p1 0 times for 1 hand-over(s) marked re-planned",
		},
		{
			name:    "a re-plan with no hand-over",
			records: events(acquired(1, "p1", 0, 1), op(kindReplanned, 1, "p1", 20, 20)),
			want:    verdict{DuplicateHandovers: 1},
			problem: "with no hand-over marked re-planned",
		},
		{
			name:        "a notice left in the outbox",
			records:     events(pull1Releases, toPull2),
			undelivered: 1,
			want:        verdict{LostHandovers: 1},
		},
		{
			name:    "a notice acknowledged untold although the pull kept the lock",
			records: events(pull1Releases, toPull2, delivery(kindAck, "e2", 2, "p1", 14)),
			want:    verdict{LostHandovers: 1},
			problem: "acknowledged untold",
		},
		{
			name: "a notice commented, then acknowledged without a re-plan",
			records: events(pull1Releases, toPull2, delivery(kindCommented, "e2", 2, "p1", 14),
				delivery(kindAck, "e2", 2, "p1", 15)),
			want:    verdict{LostHandovers: 1},
			problem: "acknowledged without a re-plan",
		},
		{
			name: "a notice commented, then acknowledged without a re-plan after the pull closed",
			records: events(pull1Releases, toPull2, delivery(kindCommented, "e2", 2, "p1", 14),
				closed(2, 15, 16, "p1"), delivery(kindAck, "e2", 2, "p1", 17)),
		},
		{
			name:    "a notice acknowledged untold after the pull closed",
			records: events(pull1Releases, toPull2, closed(2, 12, 13, "p1"), delivery(kindAck, "e2", 2, "p1", 14)),
		},
		{
			name: "a release of a lock the pull was never granted",
			records: events(
				acquired(1, "p1", 0, 1),
				released(kindUnlockOwned, 1, "p1", 10, 12, 1),
				closed(2, 20, 21, "p1"),
			),
			want:    verdict{LostHandovers: 1},
			problem: "handed over without a notice",
		},
		{
			name:    "a recorder anomaly",
			records: events(record{Kind: kindAnomaly, Err: "a comment with no notice"}),
			want:    verdict{Anomalies: 1},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			queued := map[string]bool{}
			for _, id := range c.queued {
				queued[id] = true
			}
			got := check(checkInput{Records: c.records, AgingStep: time.Hour, Queued: queued, Undelivered: c.undelivered})
			counts := func(v verdict) [5]int {
				return [5]int{v.DoubleGrants, v.OrderViolations, v.LostHandovers, v.DuplicateHandovers, v.Anomalies}
			}
			Equals(t, counts(c.want), counts(got))
			if c.problem != "" {
				Assert(t, strings.Contains(strings.Join(got.Problems, "\n"), c.problem), "no problem %q in:\n%s", c.problem, strings.Join(got.Problems, "\n"))
			}
		})
	}
}
