package backends

import (
	"context"
	"time"
)

// resolveTimeout bounds the repeat of a call whose reply was lost.
const resolveTimeout = 2 * time.Second

// abandonRetry is the pause between attempts to give back an abandoned
// acquisition while Redis does not answer.
const abandonRetry = time.Second

// abandon gives back, in the background, an acquisition whose caller was told
// it failed: its index writes failed, or Redis stopped answering and the
// acquisition may or may not have happened. It releases only the exact value
// the acquisition wrote, so it is a no-op if the lock was never taken, was
// released since, or was adopted by a later acquisition of the same pull (see
// acquire.lua); otherwise the lock passes to the next waiter or is freed.
// Attempts go on while Redis is out of reach, until the backend closes; a
// lock still held then stays with its pull, which releases it when closed or
// unlocked.
func (r *Redis) abandon(k lockKeys, token, value string) {
	done, ok := r.track()
	if !ok {
		r.logger.Warn("backend closed before an unused acquisition of lock %q could be given back; "+
			"if it was taken, its pull holds it until the pull is closed or unlocked", k.lock)
		return
	}
	go func() {
		defer done()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), leaveTimeout)
			cmd := runAll(ctx, r.client, []scriptCall{leaveCall(k, token, value, false)})[0]
			cancel()
			err := cmd.Err()
			if err == nil {
				return
			}
			if !isUnavailable(err) {
				r.logger.Warn("could not give back an unused acquisition of lock %q: %s", k.lock, err)
				return
			}
			select {
			case <-r.closed:
				r.logger.Warn("backend closed before an unused acquisition of lock %q could be given back; "+
					"if it was taken, its pull holds it until the pull is closed or unlocked", k.lock)
				return
			case <-time.After(abandonRetry):
			}
		}
	}()
}

// leaveCall ends a wait or gives back an acquisition identified by token and
// the value it wrote; keep keeps a lock handed to it (see leave.lua).
func leaveCall(k lockKeys, token, value string, keep bool) scriptCall {
	keepArg := "0"
	if keep {
		keepArg = "1"
	}
	return scriptCall{leaveScript, k.script(), []any{token, value, keepArg, k.channel}}
}
