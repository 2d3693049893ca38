-- Expires the lock's durable entries whose time ran out (each with a
-- notice), drops waiters that stopped heartbeating, and hands the lock to
-- its queue's head when it is free: a lock deleted outside these scripts
-- (an upstream replica, an operator) would otherwise leave its queue waiting
-- for a release that never comes. Drops the waiters and entries nobody could
-- be served through (helpers.lua's entry), and the lock from the queues index
-- when no durable entry is left, and sets the time before which none expires.
-- ARGV: 1 handoff channel
-- Returns {expired, transferred (0 or 1), durable entries left}.
check_lock_keys()
local now = math.floor(now_us() / 1000)
local expired = 0
local earliest = nil
for _, token in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local e = entry(token)
  if not e then
    forget_entry(token, nil)
  elseif e.deadline < now then
    if e.pull then
      notify('expired', token, e, now)
      expired = expired + 1
    end
    forget_entry(token, e.pull)
  elseif e.pull then
    earliest = math.min(earliest or e.deadline, e.deadline)
  end
end
local transferred = 0
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('ZCARD', KEYS[2]) > 0 then
  redis.call('HSET', KEYS[7], KEYS[1], string.format('%.0f', now_us()))
  if handoff(ARGV[1], nil) then
    transferred = 1
  end
end
-- Counts the durable entries left, and drops the pull fields that name none
-- (an entry dropped as unreadable leaves its pull's).
local left = 0
local fields = redis.call('HGETALL', KEYS[8])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 2) ~= 'p:' then
    left = left + 1
  elseif redis.call('HEXISTS', KEYS[8], fields[i + 1]) == 0 then
    redis.call('HDEL', KEYS[8], fields[i])
  end
end
if left == 0 then
  redis.call('SREM', KEYS[11], KEYS[1])
end
if left > 0 and earliest then
  redis.call('HSET', KEYS[3], bound_field, earliest)
else
  redis.call('HDEL', KEYS[3], bound_field)
end
return {expired, transferred, left}
