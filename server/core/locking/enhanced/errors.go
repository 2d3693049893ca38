package enhanced

import "errors"

// ErrBackendUnavailable wraps every error caused by the lock store being out of
// reach, so callers can fail closed with a message that says so.
var ErrBackendUnavailable = errors.New("enhanced locking backend unavailable")

// ErrOutcomeUnknown marks an error after which a change may or may not have
// been made: the request may have reached the store and only its answer was
// lost. Backends resolve such outcomes themselves where they can; this error
// means they could not, so the caller must not assume either outcome.
var ErrOutcomeUnknown = errors.New("outcome unknown")

// ErrCorruptLock is returned when a stored lock cannot be decoded. The lock is
// left as it is: overwriting it could grant a lock somebody holds.
var ErrCorruptLock = errors.New("stored lock is corrupt")
