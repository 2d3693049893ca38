package enhancedtest

import (
	"context"
	"testing"
	"time"

	"github.com/runatlantis/atlantis/server/events/command"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

func commandCases() []conformanceCase {
	return []conformanceCase{
		{
			name: "command lock is taken, checked and released once",
			run: func(t *testing.T, ctx context.Context, b enhanced.Backend) {
				got, err := b.CheckCommandLock(ctx, command.Apply)
				Ok(t, err)
				Assert(t, got == nil, "command lock set before anyone took it: %+v", got)

				at := time.Unix(1700000000, 0)
				lock, err := b.LockCommand(ctx, command.Apply, at)
				Ok(t, err)
				want := command.Lock{CommandName: command.Apply, LockMetadata: command.LockMetadata{UnixTime: at.Unix()}}
				Equals(t, want, *lock)
				got, err = b.CheckCommandLock(ctx, command.Apply)
				Ok(t, err)
				Assert(t, got != nil, "command lock not stored")
				Equals(t, want, *got)

				_, err = b.LockCommand(ctx, command.Apply, at.Add(time.Minute))
				Assert(t, err != nil, "command lock taken twice")
				other, err := b.CheckCommandLock(ctx, command.Plan)
				Ok(t, err)
				Assert(t, other == nil, "plan locked by the apply lock")

				Ok(t, b.UnlockCommand(ctx, command.Apply))
				got, err = b.CheckCommandLock(ctx, command.Apply)
				Ok(t, err)
				Assert(t, got == nil, "command lock left after unlock: %+v", got)
				Assert(t, b.UnlockCommand(ctx, command.Apply) != nil, "unlocking a free command lock succeeded")
			},
		},
	}
}
