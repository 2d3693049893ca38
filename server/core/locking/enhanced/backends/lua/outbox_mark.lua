-- Renews the lease of a claimed notice, recording a delivery step if one is
-- given; only for the claim holding it.
-- KEYS: 1 outbox, 2 notices
-- ARGV: 1 notice id, 2 claim id, 3 step or '' for none, 4 lease ms
-- Returns 1, or 0 when another claim holds the notice or it is gone.
check_types('zset', 'hash')
local id = ARGV[1]
if redis.call('HGET', KEYS[2], 'c:' .. id) ~= ARGV[2] then
  return 0
end
-- A step is recorded once, however often a claim reports it.
local done = redis.call('HGET', KEYS[2], 'd:' .. id) or ''
if ARGV[3] ~= '' and not string.find('\n' .. done, '\n' .. ARGV[3] .. '\n', 1, true) then
  redis.call('HSET', KEYS[2], 'd:' .. id, done .. ARGV[3] .. '\n')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[4]), id)
return 1
