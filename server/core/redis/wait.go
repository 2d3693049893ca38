package redis

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// flagWaitReplicas names the setting in errors.
const flagWaitReplicas = "--enhanced-locking-redis-wait-replicas"

// WaitTimeout bounds how long a write waits for its replicas. Replicas on
// the same network acknowledge within milliseconds; one slower than this is
// as good as absent for a lock.
const WaitTimeout = time.Second

// ErrNotReplicated is a write the master applied that fewer replicas than
// Config.WaitReplicas acknowledged in time. It is reported as failed, so no
// caller acts on it, though it may still take effect: the master keeps it,
// and loses it only if it fails over before the replicas catch up.
var ErrNotReplicated = errors.New("the write was not acknowledged by enough Redis replicas")

// replicaWait makes every command or pipeline that may write carry, on the
// same connection and in the same round trip, WAIT n WaitTimeout, and fails
// its writes unless n replicas acknowledged them.
//
// Invariant: no write through a client with WaitReplicas = n is reported as
// done unless n replicas acknowledged it. Redis replicates asynchronously, so
// without WAIT a master acknowledges a lock before any replica has it, and a
// failover in between loses the lock, which may then be granted again. WAIT
// narrows that window; it does not make Redis strongly consistent (see
// Config.WaitReplicas).
type replicaWait struct {
	replicas int
	// client is the connection pool the hook is installed on: a single
	// command that may write is sent again as a one-command pipeline of it,
	// so that its WAIT shares its connection.
	client *redis.Client
}

// installReplicaWait installs the hook on c, or on every node of a cluster.
func installReplicaWait(c redis.UniversalClient, replicas int) {
	switch c := c.(type) {
	case *redis.ClusterClient:
		// A node's pipeline is what reaches one master; the cluster client
		// only routes.
		c.OnNewNode(func(node *redis.Client) {
			node.AddHook(&replicaWait{replicas: replicas, client: node})
		})
	case *redis.Client:
		c.AddHook(&replicaWait{replicas: replicas, client: c})
	}
}

func (w *replicaWait) DialHook(next redis.DialHook) redis.DialHook { return next }

func (w *replicaWait) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !mayWrite(cmd) {
			return next(ctx, cmd)
		}
		_, err := w.client.Pipelined(ctx, func(p redis.Pipeliner) error { return p.Process(ctx, cmd) })
		return err
	}
}

func (w *replicaWait) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		writes := false
		for _, cmd := range cmds {
			writes = writes || mayWrite(cmd)
		}
		if !writes {
			return next(ctx, cmds)
		}
		if cmds[0].Name() == "multi" {
			// go-redis reads a transaction's replies by its shape, which a
			// trailing WAIT would break; nothing here sends one.
			err := fmt.Errorf("%w: %s cannot follow a MULTI transaction with WAIT; send its commands in a pipeline or a script",
				ErrNotReplicated, flagWaitReplicas)
			for _, cmd := range cmds {
				cmd.SetErr(err)
			}
			return err
		}
		wait := redis.NewIntCmd(ctx, "wait", w.replicas, WaitTimeout.Milliseconds())
		// The full slice expression makes append copy: the caller's slice
		// must not grow a command it did not send.
		err := next(ctx, append(cmds[:len(cmds):len(cmds)], wait))
		acked, waitErr := wait.Result()
		if waitErr == nil && acked >= int64(w.replicas) {
			return err
		}
		failed := fmt.Errorf("%w: WAIT %d answered %d within %s (%v): the master has the write, a failover now could lose it, "+
			"so it is treated as failed; check the replicas' links to the master, or lower %s",
			ErrNotReplicated, w.replicas, acked, WaitTimeout, waitErr, flagWaitReplicas)
		for _, cmd := range cmds {
			if cmd.Err() == nil && mayWrite(cmd) {
				cmd.SetErr(failed)
			}
		}
		if err == nil {
			err = failed
		}
		return err
	}
}

// mayWrite is false only for commands known to change nothing that
// replicates; a script may write, whatever it does.
func mayWrite(cmd redis.Cmder) bool {
	return !readOnly[cmd.Name()]
}

// readOnly are the commands that never write data.
var readOnly = map[string]bool{
	"get": true, "mget": true, "exists": true, "type": true, "ttl": true, "pttl": true, "strlen": true,
	"hget": true, "hmget": true, "hgetall": true, "hlen": true, "hexists": true, "hkeys": true, "hvals": true,
	"smembers": true, "sismember": true, "smismember": true, "scard": true,
	"zcard": true, "zcount": true, "zscore": true, "zmscore": true, "zrank": true, "zrevrank": true,
	"zrange": true, "zrangebyscore": true, "zrevrange": true, "zrevrangebyscore": true,
	"scan": true, "sscan": true, "hscan": true, "zscan": true, "keys": true, "dbsize": true,
	"ping": true, "echo": true, "info": true, "time": true, "role": true, "cluster": true, "command": true,
	"hello": true, "auth": true, "select": true, "client": true, "readonly": true, "readwrite": true,
	"asking": true, "wait": true, "evalsha_ro": true, "eval_ro": true, "script": true, "memory": true, "object": true,
	"subscribe": true, "psubscribe": true, "ssubscribe": true, "unsubscribe": true, "punsubscribe": true,
}
