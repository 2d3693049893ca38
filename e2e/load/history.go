// Package load runs lock traffic from many OS processes sharing one Redis and
// checks the recorded history: no lock granted to two pulls at once, queue
// order kept, every hand-over delivered once (see load_test.go and check.go).
package load

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Kinds of history records.
const (
	// Lock operations through db.Database, each with its call's interval.
	kindPlan        = "plan"         // TryLock by Pull on Key: Acquired, or Err
	kindReplan      = "replan"       // the queue worker's re-plan: TryLock as kindPlan
	kindUnlockOwned = "unlock-owned" // UnlockIfOwnedByPull(Key, Pull): Holder released
	kindUnlock      = "unlock"       // Unlock(Key), whoever holds it: Holder released
	kindClose       = "close"        // UnlockByPull(Pull): Keys released

	// What the queue tells the process, at the instant it tells it.
	kindQueued = "queued" // the adapter put Pull's request for Key in the queue (Entry)
	kindLeft   = "left"   // Entry left its queue because its pull closed

	// The queue worker's delivery of the outbox.
	kindClaim     = "claim"     // one notice a ClaimNotices call returned
	kindCommented = "commented" // the notice's comment was posted, at Start
	kindMark      = "mark"      // MarkNotice(Step)
	kindAck       = "ack"       // AckNotice
	kindReplanned = "replanned" // the Planner was asked to re-plan Pull's Key

	// kindClock samples the wall clock against CLOCK_MONOTONIC.
	kindClock = "clock"
	// kindAnomaly is something the recorders could not attribute; any fails
	// the run.
	kindAnomaly = "anomaly"
)

// record is one line of a process's history. Start and End are
// CLOCK_MONOTONIC nanoseconds, one clock for every process on the machine;
// times written by Redis (AtMs, EnqueuedMs) are its wall clock in ms.
type record struct {
	Proc  int    `json:"p"`
	Kind  string `json:"k"`
	Pull  int    `json:"n,omitempty"`
	Key   string `json:"key,omitempty"`
	Start int64  `json:"s"`
	End   int64  `json:"e,omitempty"`

	Acquired bool     `json:"acq,omitempty"`
	Holder   int      `json:"holder,omitempty"`
	Keys     []string `json:"keys,omitempty"`
	Err      string   `json:"err,omitempty"`
	// Unknown marks an error after which the operation may still take
	// effect (a timeout): its end is unbounded.
	Unknown bool `json:"unknown,omitempty"`

	Entry      string `json:"entry,omitempty"`
	Joined     bool   `json:"joined,omitempty"`
	Priority   int    `json:"prio,omitempty"`
	EnqueuedMs int64  `json:"enq,omitempty"`
	ExpiresMs  int64  `json:"exp,omitempty"`
	Position   int    `json:"pos,omitempty"`

	Notice     string `json:"notice,omitempty"`
	NoticeKind string `json:"nkind,omitempty"`
	AtMs       int64  `json:"at,omitempty"`
	Step       string `json:"step,omitempty"`

	// Wall is the wall clock read between two monotonic reads, Start and
	// End (kindClock).
	Wall int64 `json:"wall,omitempty"`
}

// monoNow reads CLOCK_MONOTONIC, which is the same clock in every process of
// the machine (Go's own monotonic readings are relative to each process).
func monoNow() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		// Linux always has it; without it no history can be checked.
		panic(fmt.Sprintf("reading CLOCK_MONOTONIC: %v", err))
	}
	return ts.Nano()
}

// recorder appends one process's records to its history file.
type recorder struct {
	proc int
	mu   sync.Mutex
	f    *os.File
	w    *bufio.Writer
	enc  *json.Encoder
	err  error
}

func newRecorder(path string, proc int) (*recorder, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("creating the history file: %w", err)
	}
	w := bufio.NewWriterSize(f, 1<<16)
	return &recorder{proc: proc, f: f, w: w, enc: json.NewEncoder(w)}, nil
}

func (r *recorder) add(rec record) {
	rec.Proc = r.proc
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		r.err = r.enc.Encode(rec)
	}
}

// sampleClock records where the wall clock stands against the monotonic one,
// so Redis's wall-clock times can be placed on the monotonic line.
func (r *recorder) sampleClock() {
	before := monoNow()
	wall := time.Now().UnixNano()
	r.add(record{Kind: kindClock, Start: before, End: monoNow(), Wall: wall})
}

func (r *recorder) close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		r.err = r.w.Flush()
	}
	if err := r.f.Close(); r.err == nil {
		r.err = err
	}
	return r.err
}

// readHistory reads the records of every history file.
func readHistory(paths []string) ([]record, error) {
	var all []record
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, fmt.Errorf("reading history: %w", err)
		}
		dec := json.NewDecoder(bufio.NewReader(f))
		for dec.More() {
			var rec record
			if err := dec.Decode(&rec); err != nil {
				f.Close() // nolint: errcheck
				return nil, fmt.Errorf("reading history %s: %w", p, err)
			}
			all = append(all, rec)
		}
		f.Close() // nolint: errcheck
	}
	return all, nil
}
