-- Ends a wait that timed out or was cancelled. The lock may have been handed
-- to this waiter after it stopped listening: then it keeps the lock
-- (ARGV[2] == '1') or passes it on to the next waiter, so it is never lost.
-- ARGV: 1 token, 2 keep, 3 handoff channel
-- Returns {1, lock held} or {0, current lock or nil}.
forget_waiter(ARGV[1])
local current = redis.call('GET', KEYS[1])
if current and redis.call('GET', KEYS[2]) == ARGV[1] then
  if ARGV[2] == '1' then
    return {1, current}
  end
  handoff(ARGV[3])
  current = redis.call('GET', KEYS[1])
end
return {0, current}
