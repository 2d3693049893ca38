package backends

import (
	"path/filepath"
	"testing"

	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/enhancedtest"
	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// The queue model suite (enhancedtest.RunQueueModel): 10 000 random queue
// operations per backend, each checked against a reference model. A failure
// logs the seed that replays it.

func TestQueueModelRedisStandalone(t *testing.T) {
	client := redistest.Start(t).Client(t)
	opts := RedisOptions{}
	enhancedtest.RunQueueModel(t, newTestRedis(t, client, opts), enhancedtest.QueueModelOptions{
		DeleteOutside: redisQueueOptions(client, opts).DeleteOutside,
	})
}

func TestQueueModelRedisCluster(t *testing.T) {
	client := redistest.StartCluster(t).Client(t)
	opts := RedisOptions{}
	enhancedtest.RunQueueModel(t, newTestRedis(t, client, opts), enhancedtest.QueueModelOptions{
		DeleteOutside: redisQueueOptions(client, opts).DeleteOutside,
	})
}

func TestQueueModelBoltDB(t *testing.T) {
	legacy := guardedBoltDB(t)
	b := newQueueingBoltDB(t, legacy, filepath.Join(t.TempDir(), "enhanced-locking-queue.db"))
	enhancedtest.RunQueueModel(t, b, enhancedtest.QueueModelOptions{
		DeleteOutside: func(t *testing.T, lock models.ProjectLock) {
			_, err := legacy.Unlock(lock.Project, lock.Workspace)
			Ok(t, err)
		},
	})
}
