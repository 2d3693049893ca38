package enhanced

import (
	"errors"
	"fmt"
)

// wrap turns a backend error into what an Atlantis user sees. The error's
// own message comes first: it begins with the words upstream's databases use
// for the same condition ("db transaction failed: ..."), so alerts, docs and
// users that match upstream's text keep working; what enhanced locking knows
// follows.
func (a *Adapter) wrap(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrOutcomeUnknown):
		what := "it was changed"
		switch op {
		case "lock":
			what = "the lock was granted"
		case "unlock":
			what = "the lock was released"
		}
		return fmt.Errorf("%w; enhanced locking could not %s: %s stopped answering, so whether %s is unknown; "+
			"a lock granted unseen is given back once %s answers; check the locks page, and retry once it is back",
			err, op, a.opts.BackendName, what, a.opts.BackendName)
	case errors.Is(err, ErrBackendUnavailable):
		outcome := "nothing was changed"
		if op == "lock" {
			outcome = "no lock was granted"
		}
		return fmt.Errorf("%w; enhanced locking could not %s: %s is unreachable, so %s; retry once it is back, or ask an operator to check it",
			err, op, a.opts.BackendName, outcome)
	default:
		return err
	}
}

// fenced refuses to act for a pull whose command lost its lease here.
func (a *Adapter) fenced(repoFullName string, pullNum int) error {
	if a.opts.Fence == nil {
		return nil
	}
	if err := a.opts.Fence.Check(repoFullName, pullNum); err != nil {
		return fmt.Errorf("enhanced locking stopped this command: %w; another replica may be running the next command of this pull request, so this one changes nothing more; comment the command again if it is still needed", err)
	}
	return nil
}
