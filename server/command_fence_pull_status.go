package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"strconv"
	"strings"

	goredis "github.com/redis/go-redis/v9"
	upstream "github.com/runatlantis/atlantis/server"
	"github.com/runatlantis/atlantis/server/core/db"
	upstreamredis "github.com/runatlantis/atlantis/server/core/redis"
)

// fencePullStatus fences the pull status writes upstream's components make
// on its Redis database directly: the plan and apply runners' DBUpdater and
// the pull-closed cleanup hold the database itself, not the lock clients the
// adapter sits behind, and no seam reaches them. The value behind upstream's
// *redis.RedisDB is replaced by one on a client of the same Redis whose hook
// refuses to SET or DEL the status key of a fenced pull
// ("<host>::<repo>::<number>", upstream's format); upstream closes it at
// shutdown. The client upstream built is left idle.
//
// Upstream's Redis database in cluster mode (--redis-cluster-addresses) and
// its BoltDB database keep their own client: their pull status writes are
// not fenced. BoltDB's status is this replica's alone, so a fenced write
// there misleads no other replica.
func fencePullStatus(database db.Database, userConfig upstream.UserConfig, fence pullFence) error {
	rdb, ok := database.(*upstreamredis.RedisDB)
	if !ok || userConfig.RedisClusterAddresses != "" {
		return nil
	}
	opts := &goredis.Options{
		Addr:     fmt.Sprintf("%s:%d", userConfig.RedisHost, userConfig.RedisPort),
		Username: userConfig.RedisUsername,
		Password: userConfig.RedisPassword,
		DB:       userConfig.RedisDB,
	}
	if userConfig.RedisTLSEnabled {
		opts.TLSConfig = &tls.Config{
			MinVersion:         tls.VersionTLS12,
			InsecureSkipVerify: userConfig.RedisInsecureSkipVerify, // nolint: gosec // the operator's upstream setting, as upstream applies it
		}
	}
	client := goredis.NewClient(opts)
	client.AddHook(pullStatusFence{fence: fence})
	fenced, err := upstreamredis.NewWithClient(client, "", "")
	if err != nil {
		client.Close() // nolint: errcheck
		return fmt.Errorf("fencing upstream's pull status in Redis: %w", err)
	}
	*rdb = *fenced
	return nil
}

// pullStatusFence is a go-redis hook that refuses the pull status writes of
// fenced pulls.
type pullStatusFence struct {
	fence pullFence
}

func (h pullStatusFence) DialHook(next goredis.DialHook) goredis.DialHook { return next }

func (h pullStatusFence) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		if err := h.check(cmd); err != nil {
			cmd.SetErr(err)
			return err
		}
		return next(ctx, cmd)
	}
}

func (h pullStatusFence) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		for _, cmd := range cmds {
			if err := h.check(cmd); err != nil {
				cmd.SetErr(err)
				return err
			}
		}
		return next(ctx, cmds)
	}
}

// check refuses a SET or DEL of a fenced pull's status key.
func (h pullStatusFence) check(cmd goredis.Cmder) error {
	name := strings.ToLower(cmd.Name())
	args := cmd.Args()
	if (name != "set" && name != "del") || len(args) < 2 {
		return nil
	}
	key, ok := args[1].(string)
	if !ok {
		return nil
	}
	repo, pullNum, ok := parsePullStatusKey(key)
	if !ok {
		return nil
	}
	return h.fence.check("write the pull status", repo, pullNum)
}

// parsePullStatusKey reads upstream's pull status key,
// "<VCS host>::<repo full name>::<pull number>".
func parsePullStatusKey(key string) (repo string, pullNum int, ok bool) {
	parts := strings.Split(key, "::")
	if len(parts) != 3 {
		return "", 0, false
	}
	n, err := strconv.Atoi(parts[2])
	if err != nil {
		return "", 0, false
	}
	return parts[1], n, true
}
