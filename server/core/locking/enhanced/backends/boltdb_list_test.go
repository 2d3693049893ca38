package backends

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/runatlantis/atlantis/server/core/boltdb"
	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"
	. "github.com/runatlantis/atlantis/testing"
	tally "github.com/uber-go/tally/v4"
	bolt "go.etcd.io/bbolt"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/legacydb"
)

// TestBoltDBListReportsAnUndecodableLockAndListsTheOthers: a lock value in
// atlantis.db that does not decode (a hand edit, a damaged page) is left out
// of List and reported, by a log line naming its key and by the
// lock_undecodable_total counter; every other lock is listed, and locking
// goes on.
func TestBoltDBListReportsAnUndecodableLockAndListsTheOthers(t *testing.T) {
	dir := t.TempDir()
	first := enhancedtest.NewLock("org/repo", "a", "default", "", 1)
	last := enhancedtest.NewLock("org/repo", "c", "default", "", 3)
	corruptKey := "org/repo/b/default/"
	file := filepath.Join(dir, "atlantis.db")
	raw, err := bolt.Open(file, 0o600, nil)
	Ok(t, err)
	Ok(t, raw.Update(func(tx *bolt.Tx) error {
		bucket, err := tx.CreateBucketIfNotExists([]byte("runLocks"))
		if err != nil {
			return err
		}
		for _, l := range []models.ProjectLock{first, last} {
			value, err := json.Marshal(l)
			if err != nil {
				return err
			}
			if err := bucket.Put([]byte(models.GenerateLockKey(l.Project, l.Workspace)), value); err != nil {
				return err
			}
		}
		return bucket.Put([]byte(corruptKey), []byte(`{"Pull": "not a pull"`))
	}))
	Ok(t, raw.Close())

	upstream, err := boltdb.New(dir)
	Ok(t, err)
	t.Cleanup(func() { _ = upstream.Close() })
	logger := logging.NewNoopLogger(t).WithHistory()
	scope := tally.NewTestScope("", nil)
	guarded, err := legacydb.Guard(upstream, legacydb.Options{File: file, Logger: logger, Scope: scope})
	Ok(t, err)
	b := NewBoltDB(guarded, logger)

	listed, err := b.List(context.Background())
	Ok(t, err)
	enhancedtest.EqualLockSets(t, []models.ProjectLock{first, last}, listed)
	Equals(t, int64(1), scope.Snapshot().Counters()["lock_undecodable_total+"].Value())
	Equals(t, 1, strings.Count(logger.GetHistory(), corruptKey))
	mustLockBolt(t, b, enhancedtest.NewLock("org/repo", "d", "default", "", 4))
	// The copy read in place of upstream's List is gone.
	files, err := os.ReadDir(dir)
	Ok(t, err)
	Equals(t, 1, len(files))
}
