-- Registers a waiter, refreshes its liveness, and tells it whether it holds the
-- lock. Called when the wait starts, on every heartbeat and on a notification,
-- so a lost notification costs at most one heartbeat interval.
-- ARGV: 1 token, 2 this waiter's lock value (with its token), 3 pull base
--       repo, 4 pull number, 5 headstart us, 6 liveness ttl ms, 7 handoff
--       channel
-- Returns {1, lock held} or {0, current lock or nil}; {-1, value} if corrupt.
check_lock_keys()
local token = ARGV[1]
local current = redis.call('GET', KEYS[1])
if current then
  -- Handed to this waiter: the lock is the value it registered. A lock
  -- handed to it and then deleted outside our scripts is gone with that
  -- value, so another pull's lock is never taken for this waiter's.
  if current == ARGV[2] then
    forget_pull_entry(ARGV[3], ARGV[4])
    return {1, current}
  end
  local lock = decode(current)
  if not lock then
    return {-1, current}
  end
  if same_pull(lock, ARGV[3], ARGV[4]) then
    forget_waiter(token)
    forget_pull_entry(ARGV[3], ARGV[4])
    return {1, adopt(current, token)}
  end
end

local now = math.floor(now_us() / 1000)
if not redis.call('ZSCORE', KEYS[2], token) then
  redis.call('ZADD', KEYS[2], queue_score(ARGV[5]), token)
  redis.call('HSET', KEYS[4], token, ARGV[2])
end
redis.call('HSET', KEYS[3], token, now + tonumber(ARGV[6]))

if not current then
  -- Free while waiters exist: the holder vanished without a handoff (deleted by
  -- an upstream replica or by hand). Its holding ended by now: record that, as
  -- a release does, then serve the queue in order; we are in it.
  redis.call('HSET', KEYS[7], KEYS[1], string.format('%.0f', now_us()))
  local holder = handoff(ARGV[7], nil)
  current = redis.call('GET', KEYS[1])
  if holder == token then
    forget_pull_entry(ARGV[3], ARGV[4])
    return {1, current}
  end
end
return {0, current}
