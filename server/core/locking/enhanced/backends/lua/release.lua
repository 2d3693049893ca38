-- Releases the lock, handing it to the best live waiter.
-- ARGV: 1 pull number that must hold the lock, or '' for any holder;
--       2 call id; 3 handoff channel
-- Returns {1, released lock}, {0} when there was nothing to release, or
-- {-1, stored value} when the stored lock is corrupt (left in place).
--
-- A client that lost the reply retries the call with the same id. Without the
-- record of the call's outcome, the retry would release whoever took the lock
-- in between.
local id = ARGV[2]
local last = redis.call('GET', KEYS[6])
if last and string.sub(last, 1, #id + 1) == id .. '\n' then
  local released = string.sub(last, #id + 2)
  if released == '' then
    return {0}
  end
  return {1, released}
end

local current = redis.call('GET', KEYS[1])
local lock = nil
if current then
  lock = decode(current)
  if not lock then
    return {-1, current}
  end
  if ARGV[1] ~= '' and lock['Pull']['Num'] ~= tonumber(ARGV[1]) then
    lock = nil
  end
end
if not current then
  redis.call('SREM', KEYS[5], KEYS[1])
end
if not lock then
  redis.call('SET', KEYS[6], id .. '\n', 'PX', 60000)
  return {0}
end
redis.call('SET', KEYS[6], id .. '\n' .. current, 'PX', 60000)
handoff(ARGV[3])
return {1, current}
