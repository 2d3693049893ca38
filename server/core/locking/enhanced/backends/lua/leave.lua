-- Ends a wait that timed out or was cancelled, or gives back an acquisition
-- whose caller cannot use it. The lock may have been handed to this waiter
-- after it stopped listening: then it keeps the lock (ARGV[3] == '1') or
-- passes it on to the next waiter, so it is never lost. Its lock is the exact
-- value it wrote, or the value a hand-over to its pull's entry wrote for it
-- (handoff), which ends with its token.
-- ARGV: 1 token, 2 the value it wrote, 3 keep, 4 handoff channel
-- Returns {1, lock held} or {0, current lock or nil}.
check_lock_keys()
forget_waiter(ARGV[1])
local current = redis.call('GET', KEYS[1])
local mine = token_field .. ARGV[1] .. '"}'
if current and (current == ARGV[2] or ARGV[1] ~= '' and string.sub(current, -#mine) == mine) then
  if ARGV[3] == '1' then
    return {1, current}
  end
  handoff(ARGV[4], current)
  current = redis.call('GET', KEYS[1])
end
return {0, current}
