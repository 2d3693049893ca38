-- Deletes a delivered notice; only for the claim holding it.
-- KEYS: 1 outbox, 2 notices
-- ARGV: 1 notice id, 2 claim id
-- Returns 1, or 0 when another claim holds the notice or it is gone.
check_types('zset', 'hash')
local id = ARGV[1]
if redis.call('HGET', KEYS[2], 'c:' .. id) ~= ARGV[2] then
  return 0
end
redis.call('ZREM', KEYS[1], id)
redis.call('HDEL', KEYS[2], id, 'c:' .. id, 'd:' .. id)
return 1
