package legacydb

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/runatlantis/atlantis/server/core/db"
	"github.com/runatlantis/atlantis/server/events/models"
)

// The sync marker records, in the legacy database itself, when its locks were
// last made a copy of enhanced locking's (by a replica starting with enhanced
// locking off). Kept with the database it describes, it follows the database
// wherever it goes: a BoltDB file moved to another host, or upstream's Redis
// database shared by a fleet.
//
// It is stored as the pull status of a pull no VCS can have (its host name is
// under .invalid): upstream reads a pull status only by key, so nothing of
// upstream's ever sees it. The pull's head commit field holds the time and
// the id of the snapshot of enhanced locking's locks that was copied.
var syncMarkerPull = models.PullRequest{
	Num: 0,
	BaseRepo: models.Repo{
		FullName: "atlantis-enhanced/legacy-sync",
		VCSHost:  models.VCSHost{Hostname: "atlantis-enhanced.invalid"},
	},
}

// SyncedAt returns when the legacy database's locks were last made a copy of
// enhanced locking's, with the id of the snapshot copied, or the zero time if
// they were not since enhanced locking last ran.
func SyncedAt(database db.Database) (time.Time, string, error) {
	status, err := database.GetPullStatus(syncMarkerPull)
	if err != nil {
		return time.Time{}, "", fmt.Errorf("reading the legacy database's sync marker: %w", err)
	}
	if status == nil {
		return time.Time{}, "", nil
	}
	at, id, _ := strings.Cut(status.Pull.HeadCommit, ":")
	ms, err := strconv.ParseInt(at, 10, 64)
	if err != nil {
		return time.Time{}, "", fmt.Errorf("the legacy database's sync marker %q is not a time and an id: %w", status.Pull.HeadCommit, err)
	}
	return time.UnixMilli(ms), id, nil
}

// MarkSynced records that the legacy database's locks were made a copy of
// enhanced locking's at t, from the snapshot id (empty when none could be
// taken).
func MarkSynced(database db.Database, t time.Time, id string) error {
	pull := syncMarkerPull
	pull.HeadCommit = strconv.FormatInt(t.UnixMilli(), 10) + ":" + id
	if _, err := database.UpdatePullWithResults(pull, nil); err != nil {
		return fmt.Errorf("writing the legacy database's sync marker: %w", err)
	}
	return nil
}

// ClearSynced forgets the marker, once enhanced locking took the locks back.
func ClearSynced(database db.Database) error {
	if err := database.DeletePullStatus(syncMarkerPull); err != nil {
		return fmt.Errorf("removing the legacy database's sync marker: %w", err)
	}
	return nil
}
