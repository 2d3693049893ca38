-- Extends a pull's command lease while the token still holds it.
-- KEYS: 1 the lease. ARGV: 1 token, 2 ttl ms. Returns 1 renewed, 0 lost.
check_types('hash')
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
