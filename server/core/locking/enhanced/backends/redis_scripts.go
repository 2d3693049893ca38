package backends

import (
	"context"
	_ "embed"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

var (
	//go:embed lua/check.lua
	checkLua string
	//go:embed lua/helpers.lua
	helpersLua string
	//go:embed lua/acquire.lua
	acquireLua string
	//go:embed lua/release.lua
	releaseLua string
	//go:embed lua/wait.lua
	waitLua string
	//go:embed lua/leave.lua
	leaveLua string
	//go:embed lua/prune.lua
	pruneLua string
	//go:embed lua/take_pull.lua
	takePullLua string
	//go:embed lua/enqueue.lua
	enqueueLua string
	//go:embed lua/leave_queue.lua
	leaveQueueLua string
	//go:embed lua/queue_read.lua
	queueReadLua string
	//go:embed lua/sweep.lua
	sweepLua string
	//go:embed lua/outbox_claim.lua
	outboxClaimLua string
	//go:embed lua/outbox_mark.lua
	outboxMarkLua string
	//go:embed lua/outbox_ack.lua
	outboxAckLua string
	//go:embed lua/command_lease_try.lua
	commandLeaseTryLua string
	//go:embed lua/command_lease_renew.lua
	commandLeaseRenewLua string
	//go:embed lua/command_lease_release.lua
	commandLeaseReleaseLua string
)

// Lock scripts share helpers.lua and its KEYS layout (lockKeys.script).
var (
	acquireScript  = lockScript(acquireLua)
	releaseScript  = lockScript(releaseLua)
	waitScript     = lockScript(waitLua)
	leaveScript    = lockScript(leaveLua)
	pruneScript    = checkedScript(pruneLua)
	takePullScript = checkedScript(takePullLua)

	enqueueScript     = lockScript(enqueueLua)
	leaveQueueScript  = lockScript(leaveQueueLua)
	queueReadScript   = lockScript(queueReadLua)
	sweepScript       = lockScript(sweepLua)
	outboxClaimScript = checkedScript(outboxClaimLua)
	outboxMarkScript  = checkedScript(outboxMarkLua)
	outboxAckScript   = checkedScript(outboxAckLua)

	commandLeaseTryScript     = checkedScript(commandLeaseTryLua)
	commandLeaseRenewScript   = checkedScript(commandLeaseRenewLua)
	commandLeaseReleaseScript = checkedScript(commandLeaseReleaseLua)
)

// checkedScript is a script that checks what it reads with check.lua.
func checkedScript(body string) *redis.Script {
	return redis.NewScript(checkLua + "\n" + body)
}

func lockScript(body string) *redis.Script {
	return checkedScript(helpersLua + "\n" + body)
}

// scriptReply is a lock script's {status, value} answer.
type scriptReply struct {
	status int64
	value  string
	// found is false when the script returned no value, e.g. the lock is free.
	found bool
}

const (
	statusCorrupt int64 = -1
	statusNo      int64 = 0
	statusYes     int64 = 1
)

func parseReply(cmd *redis.Cmd) (scriptReply, error) {
	vals, err := cmd.Slice()
	if err != nil {
		return scriptReply{}, err
	}
	if len(vals) == 0 {
		return scriptReply{}, fmt.Errorf("empty reply from lock script")
	}
	status, ok := vals[0].(int64)
	if !ok {
		return scriptReply{}, fmt.Errorf("unexpected lock script status %T", vals[0])
	}
	reply := scriptReply{status: status}
	if len(vals) > 1 && vals[1] != nil {
		if reply.value, ok = vals[1].(string); !ok {
			return scriptReply{}, fmt.Errorf("unexpected lock script value %T", vals[1])
		}
		reply.found = true
	}
	return reply, nil
}

// scriptCall is one script invocation in a pipeline.
type scriptCall struct {
	script *redis.Script
	keys   []string
	args   []any
}

// runAll sends every call in one pipeline (go-redis splits it per node in a
// cluster). Redis forgets scripts when it restarts or fails over, so calls
// answered NOSCRIPT, which did not run, are sent again with EVAL. Each call's
// own error is on its command.
func runAll(ctx context.Context, c redis.Cmdable, calls []scriptCall) []*redis.Cmd {
	cmds := make([]*redis.Cmd, len(calls))
	sent, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, call := range calls {
			cmds[i] = call.script.EvalSha(ctx, p, call.keys, call.args...)
		}
		return nil
	})
	failUnanswered(sent, err)
	var missing []int
	for i, cmd := range cmds {
		if redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
			missing = append(missing, i)
		}
	}
	if len(missing) == 0 {
		return cmds
	}
	sent, err = c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, i := range missing {
			cmds[i] = calls[i].script.Eval(ctx, p, calls[i].keys, calls[i].args...)
		}
		return nil
	})
	failUnanswered(sent, err)
	return cmds
}

// failUnanswered gives err, the pipeline's own error, to every command of it
// without one, unless err is a reply to one of them. go-redis leaves commands
// so when its retries run out on a network error, and such a command must not
// read as an empty success; one whose reply did arrive is merely repeated.
func failUnanswered(cmds []redis.Cmder, err error) {
	var reply redis.Error
	if err == nil || errors.As(err, &reply) {
		return
	}
	for _, cmd := range cmds {
		if cmd.Err() == nil {
			cmd.SetErr(err)
		}
	}
}
