package backends

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/runatlantis/atlantis/server/events/models"
)

// A lock's value in Redis is upstream's JSON of models.ProjectLock with one
// more field at the end, the token of the acquisition that wrote it:
//
//	{"Project":{...},"Pull":{...},...,"Time":"...","EnhancedLockToken":"Q3Z..."}
//
// Upstream's decoder ignores the field, so upstream replicas read our locks
// as their own. Ownership lives in the value, as bsm/redislock keeps its token
// in the value it sets: whoever deletes the lock (an upstream replica, an
// operator's DEL) deletes the token with it, so no side key can outlive the
// lock and vouch for a later holder. An acquisition holds the lock exactly
// while the stored value equals the value it wrote, a byte comparison the
// scripts make without decoding JSON. A lock without the field was written by
// a replica without enhanced locking.
const tokenField = `,"EnhancedLockToken":"`

// encodeLock returns the value an acquisition with token writes. Tokens come
// from newToken and need no JSON escaping.
func encodeLock(lock models.ProjectLock, token string) (string, error) {
	b, err := json.Marshal(lock)
	if err != nil {
		return "", fmt.Errorf("encoding lock: %w", err)
	}
	return string(b[:len(b)-1]) + tokenField + token + `"}`, nil
}

// writtenByEnhanced says whether value carries an acquisition token, i.e.
// was written by an enhanced replica.
func writtenByEnhanced(value string) bool {
	i := strings.LastIndex(value, tokenField)
	return i >= 0 && strings.HasSuffix(value, `"}`) && !strings.ContainsAny(value[i+len(tokenField):len(value)-2], `"\`)
}

// tokenOf returns the acquisition token of a value an enhanced replica
// wrote, or "".
func tokenOf(value string) string {
	if !writtenByEnhanced(value) {
		return ""
	}
	return value[strings.LastIndex(value, tokenField)+len(tokenField) : len(value)-2]
}
