-- Releases the lock, handing it to the best live waiter.
-- ARGV: 1 pull number that must hold the lock, or '' for any holder;
--       2 call id; 3 handoff channel; 4 release time to record (unix us),
--       or '' to record none; 5 a pull ("<base repo>#<number>") to report
--       on, or ''
-- Returns {1, released lock, queued}, {0, false, queued} when there was
-- nothing to release, or {-1, stored value, queued} when a release by pull
-- finds a corrupt lock, which it leaves in place; a release by key frees a
-- corrupt lock too (helpers.lua). queued is 1 when the pull of ARGV[5] has a
-- durable entry in the lock's queue after the call, else 0: UnlockByPull
-- keeps such a lock in the pull's index, which it otherwise empties.
--
-- A client that lost the reply repeats the call with the same id (go-redis
-- does by itself). Without the record of the call's outcome, the repeat
-- would release whoever took the lock in between.
local function queued()
  if ARGV[5] ~= '' and redis.call('HEXISTS', KEYS[8], 'p:' .. ARGV[5]) == 1 then
    return 1
  end
  return 0
end

check_lock_keys()
local id = ARGV[2]
-- One read for both: the record of the last release and the lock.
local got = redis.call('MGET', KEYS[6], KEYS[1])
local last, current = got[1], got[2]
if last and string.sub(last, 1, #id + 1) == id .. '\n' then
  local released = string.sub(last, #id + 2)
  if released == '' then
    return {0, false, queued()}
  end
  return {1, released, queued()}
end

if current and ARGV[1] ~= '' then
  local lock = decode(current)
  if not lock then
    return {-1, current, queued()}
  end
  if lock['Pull']['Num'] ~= tonumber(ARGV[1]) then
    current = nil
  end
end
if not current then
  redis.call('SET', KEYS[6], id .. '\n', 'PX', 60000)
  return {0, false, queued()}
end
redis.call('SET', KEYS[6], id .. '\n' .. current, 'PX', 60000)
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[7], KEYS[1], ARGV[4])
end
handoff(ARGV[3], current)
return {1, current, queued()}
