package chaos

import (
	"testing"
	"time"

	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/e2e/e2ekit"
	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
)

// TestHistoryCheck: the checker counts what it promises and nothing else,
// so that a clean CHAOS line means something. Times are milliseconds from
// a fixed start.
func TestHistoryCheck(t *testing.T) {
	const bot = "atlantis-bot"
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	planned := func(id int64, ms int) vcssim.Comment {
		return vcssim.Comment{ID: id, Author: bot, CreatedAt: at(ms), Body: "Ran Plan for dir: `alpha` workspace: `default`\n+ terraform_data.x"}
	}
	handedOver := func(id int64, ms int) vcssim.Comment {
		return vcssim.Comment{ID: id, Author: bot, CreatedAt: at(ms), Body: "**Lock handed over**: this pull request now holds the lock"}
	}
	release := func(pull, ms int) op { return op{at: at(ms), pull: pull, kind: opUnlock, ok: true} }
	read := func(holder, from, to int) sample { return sample{from: at(from), to: at(to), holder: holder} }
	span := func(pull, pid, from, to int) e2ekit.Span {
		s := e2ekit.Span{Pull: pull, Dir: "alpha", Command: "plan", PID: pid, Start: at(from)}
		if to >= 0 {
			s.End = at(to)
		}
		return s
	}

	cases := []struct {
		name     string
		ops      []op
		comments map[int][]vcssim.Comment
		samples  []sample
		queuings []queuing
		spans    []e2ekit.Span
		deaths   map[int]time.Time
		want     verdict
	}{
		{
			name: "a release hands the lock over: clean",
			ops:  []op{release(1, 200), release(2, 500)},
			comments: map[int][]vcssim.Comment{
				1: {planned(10, 100)},
				2: {handedOver(20, 300), planned(21, 400)},
			},
			// Redis shows #2 before its hand-over comment, after #1's release.
			samples:  []sample{read(1, 110, 120), read(2, 210, 220), read(2, 310, 320), read(0, 510, 520)},
			queuings: []queuing{{pull: 2, since: 5, at: at(50)}},
			want:     verdict{operations: 2, grants: 3, queued: 1, handOvers: 1},
		},
		{
			name: "two pulls told they hold one lock",
			ops:  []op{release(2, 500)},
			comments: map[int][]vcssim.Comment{
				1: {planned(10, 100)},
				2: {planned(20, 300)},
			},
			want: verdict{operations: 1, grants: 2, doubleGrants: 1},
		},
		{
			name:     "a told holder's lock gone without a release",
			comments: map[int][]vcssim.Comment{1: {planned(10, 100)}},
			// Counted once, however many samples show it.
			samples: []sample{read(1, 110, 120), read(0, 200, 210), read(0, 300, 310), read(3, 400, 410)},
			want:    verdict{grants: 1, lost: 1},
		},
		{
			name:     "a told holder's lock held by another pull by Redis",
			comments: map[int][]vcssim.Comment{1: {planned(10, 100)}},
			samples:  []sample{read(3, 200, 210), read(3, 300, 310)},
			want:     verdict{grants: 1, lost: 1, doubleGrants: 1},
		},
		{
			name:     "a reading that began before the grant, or failed, proves nothing",
			comments: map[int][]vcssim.Comment{1: {planned(10, 100)}},
			samples:  []sample{read(0, 90, 110), read(unknownHolder, 120, 400)},
			want:     verdict{grants: 1},
		},
		{
			name:     "a queued pull never handed the lock, another handed it twice",
			comments: map[int][]vcssim.Comment{2: {handedOver(20, 300), handedOver(21, 310)}},
			queuings: []queuing{{pull: 2, since: 5, at: at(50)}, {pull: 3, since: 5, at: at(60)}},
			want:     verdict{grants: 2, handOvers: 2, queued: 2, lost: 2},
		},
		{
			name:   "runs of one pull overlap; another pull's do not count",
			spans:  []e2ekit.Span{span(1, 10, 0, 100), span(1, 11, 50, 150), span(2, 11, 60, 70)},
			want:   verdict{overlaps: 1},
			deaths: map[int]time.Time{},
		},
		{
			name:   "a killed replica's run ends at the kill",
			spans:  []e2ekit.Span{span(1, 10, 0, -1), span(1, 11, 150, 200)},
			deaths: map[int]time.Time{10: at(100)},
			want:   verdict{},
		},
		{
			name:  "a live replica's run that never ended overlaps what follows",
			spans: []e2ekit.Span{span(1, 10, 0, -1), span(1, 11, 150, 200)},
			want:  verdict{overlaps: 1},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHistory()
			for pull := 1; pull <= 3; pull++ {
				h.pullDir(pull, "alpha")
			}
			h.ops = tc.ops
			h.samples["alpha"] = tc.samples
			h.queuings = tc.queuings
			got := h.check(tc.comments, bot, tc.spans, tc.deaths, at(1000))
			t.Logf("findings: %q", got.findings)
			got.findings, got.notes = nil, nil
			Equals(t, tc.want, got)
		})
	}
}
