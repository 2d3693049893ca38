-- Leases up to ARGV[2] due notices of one slot's outbox to one claim: each is
-- due again when the lease ends, so a replica that dies while delivering it
-- leaves it to the next claim.
-- KEYS: 1 outbox, 2 notices (see helpers.lua, KEYS[9] and KEYS[10])
-- ARGV: 1 lease ms, 2 max notices, 3 claim id
-- Returns {id, notice, steps done, ...}.
check_types('zset', 'hash')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))) do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), id)
  redis.call('HSET', KEYS[2], 'c:' .. id, ARGV[3])
  table.insert(out, id)
  table.insert(out, redis.call('HGET', KEYS[2], id) or '')
  table.insert(out, redis.call('HGET', KEYS[2], 'd:' .. id) or '')
end
return out
