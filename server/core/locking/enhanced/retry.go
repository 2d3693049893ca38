package enhanced

import (
	"errors"
	"time"
)

// RetryPolicy retries operations that failed because the backend was briefly
// out of reach. The zero value makes one attempt.
type RetryPolicy struct {
	MaxAttempts int
	// Backoff is the pause before the first retry, doubled for each next one.
	Backoff time.Duration
}

// do runs op until it succeeds, fails for another reason than an unreachable
// backend, or the attempts are used up. Lock contention is not an error, so it
// is never retried here: waiting for a lock is the backend's bounded wait. An
// unknown outcome is not retried either: the backend already repeated the
// call under its own id, and a new call (a new id) could release a lock
// handed on since.
func (r RetryPolicy) do(op func() error) error {
	pause := r.Backoff
	var err error
	for attempt := 1; ; attempt++ {
		err = op()
		if err == nil || !errors.Is(err, ErrBackendUnavailable) || errors.Is(err, ErrOutcomeUnknown) || attempt >= r.MaxAttempts {
			return err
		}
		time.Sleep(pause)
		pause *= 2
	}
}
