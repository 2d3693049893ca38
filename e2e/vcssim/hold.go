package vcssim

import (
	"net/http"
	"sync"
)

// CommentHold makes the requests that would create matching comments wait,
// as a GitHub that is slow to answer would, so a test can act while a client
// is in the middle of commenting: kill it, for example. Create it with
// HoldComments.
type CommentHold struct {
	sim   *Sim
	match func(body string) bool

	arrived     chan struct{}
	arriveOnce  sync.Once
	release     chan struct{}
	releaseOnce sync.Once

	mu      sync.Mutex
	dropped int
}

// HoldComments holds every request to create a comment whose body satisfies
// match until the hold is released. A held request whose client goes away
// meanwhile (it died, or gave up) creates no comment: GitHub never finished
// it. Close releases every hold.
func (s *Sim) HoldComments(match func(body string) bool) *CommentHold {
	h := &CommentHold{sim: s, match: match, arrived: make(chan struct{}), release: make(chan struct{})}
	s.mu.Lock()
	s.holds = append(s.holds, h)
	s.mu.Unlock()
	return h
}

// Arrived is closed once a request is held.
func (h *CommentHold) Arrived() <-chan struct{} { return h.arrived }

// Dropped is how many held requests ended because their client went away.
func (h *CommentHold) Dropped() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.dropped
}

// Release lets the held requests create their comments and holds no more.
func (h *CommentHold) Release() {
	h.releaseOnce.Do(func() {
		s := h.sim
		s.mu.Lock()
		for i, other := range s.holds {
			if other == h {
				s.holds = append(s.holds[:i], s.holds[i+1:]...)
				break
			}
		}
		s.mu.Unlock()
		close(h.release)
	})
}

// awaitHolds waits while a hold matches body, and says whether the request
// should go on: false when its client went away first.
func (s *Sim) awaitHolds(r *http.Request, body string) bool {
	s.mu.Lock()
	var matching []*CommentHold
	for _, h := range s.holds {
		if h.match(body) {
			matching = append(matching, h)
		}
	}
	s.mu.Unlock()
	for _, h := range matching {
		h.arriveOnce.Do(func() { close(h.arrived) })
		select {
		case <-h.release:
		case <-r.Context().Done():
			h.mu.Lock()
			h.dropped++
			h.mu.Unlock()
			s.logf("vcssim: a held comment's client went away; no comment created: %.100q", body)
			return false
		}
	}
	return true
}

// releaseHolds releases every hold, so that no request waits past Close.
func (s *Sim) releaseHolds() {
	s.mu.Lock()
	holds := append([]*CommentHold(nil), s.holds...)
	s.mu.Unlock()
	for _, h := range holds {
		h.Release()
	}
}
