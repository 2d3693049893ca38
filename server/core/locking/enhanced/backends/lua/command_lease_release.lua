-- Frees a pull's command lease if the token holds it, and takes the token
-- out of the wait line: compare-and-delete, so a holder whose lease lapsed
-- never frees its successor's.
-- KEYS as command_lease_try.lua. ARGV: 1 token. Returns 1 if it held the lease.
check_types('hash', 'zset', 'hash')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
