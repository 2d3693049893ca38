-- Expires the lock's durable entries whose time ran out (each with a
-- notice), drops waiters that stopped heartbeating, and hands the lock to
-- its queue's head when it is free: a lock deleted outside these scripts
-- (an upstream replica, an operator) would otherwise leave its queue waiting
-- for a release that never comes. Drops the lock from the queues index when
-- no durable entry is left, and sets the time before which none expires.
-- ARGV: 1 handoff channel
-- Returns {expired, transferred (0 or 1), durable entries left}.
local now = math.floor(now_us() / 1000)
local expired = 0
local earliest = nil
for _, token in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local deadline = tonumber(redis.call('HGET', KEYS[3], token))
  if deadline and deadline >= now and redis.call('HEXISTS', KEYS[8], token) == 1 then
    earliest = math.min(earliest or deadline, deadline)
  end
  if not deadline or deadline < now then
    local meta = redis.call('HGET', KEYS[8], token)
    if meta then
      notify('expired', token, meta, deadline, redis.call('HGET', KEYS[4], token), now)
      forget_entry(token, meta)
      expired = expired + 1
    else
      forget_waiter(token)
    end
  end
end
local transferred = 0
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('ZCARD', KEYS[2]) > 0 then
  redis.call('HSET', KEYS[7], KEYS[1], string.format('%.0f', now_us()))
  if handoff(ARGV[1], nil) then
    transferred = 1
  end
end
local left = redis.call('HLEN', KEYS[8]) / 2
if left == 0 then
  redis.call('SREM', KEYS[11], KEYS[1])
end
if left > 0 and earliest then
  redis.call('HSET', KEYS[3], bound_field, earliest)
else
  redis.call('HDEL', KEYS[3], bound_field)
end
return {expired, transferred, left}
