package enhanced

import "errors"

// ErrBackendUnavailable wraps every error caused by the lock store being out of
// reach, so callers can fail closed with a message that says so.
var ErrBackendUnavailable = errors.New("enhanced locking backend unavailable")

// ErrCorruptLock is returned when a stored lock cannot be decoded. The lock is
// left as it is: overwriting it could grant a lock somebody holds.
var ErrCorruptLock = errors.New("stored lock is corrupt")
