-- Takes a pull's command lease for a token, or keeps the token's place among
-- the pull's waiters, in arrival order. Asked again by a waiting token on every
-- poll, which refreshes its liveness; asked by the holding token, it renews.
-- KEYS: 1 the lease (HASH token, replica, command, since ms, repo, pull),
--       2 its waiters (ZSET token -> first ask, Redis us),
--       3 their liveness (HASH token -> deadline, Redis ms)
-- ARGV: 1 token, 2 replica, 3 command, 4 lease ttl ms, 5 waiter ttl ms,
--       6 repo, 7 pull number
-- Returns {granted 1/0, waiters ahead, holder token, replica, command, since}.
check_types('hash', 'zset', 'hash')
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
local token = ARGV[1]
local ttl = tonumber(ARGV[4])
local waiter_ttl = tonumber(ARGV[5])

local holder = redis.call('HMGET', KEYS[1], 'token', 'replica', 'command', 'since')
if holder[1] == token then
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {1, 0, holder[1], holder[2], holder[3], holder[4]}
end

-- A waiter that stopped asking (its replica died) holds nobody up, nor does
-- one whose liveness is no time.
for _, w in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local live = tonumber(redis.call('HGET', KEYS[3], w))
  if w ~= token and not (live and live >= now) then
    redis.call('ZREM', KEYS[2], w)
    redis.call('HDEL', KEYS[3], w)
  end
end
if not redis.call('ZSCORE', KEYS[2], token) then
  redis.call('ZADD', KEYS[2], now_us, token)
end

if not holder[1] and redis.call('ZRANGE', KEYS[2], 0, 0)[1] == token then
  redis.call('ZREM', KEYS[2], token)
  redis.call('HDEL', KEYS[3], token)
  redis.call('HSET', KEYS[1], 'token', token, 'replica', ARGV[2], 'command', ARGV[3],
    'since', now, 'repo', ARGV[6], 'pull', ARGV[7])
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {1, 0, token, ARGV[2], ARGV[3], tostring(now)}
end

redis.call('HSET', KEYS[3], token, now + waiter_ttl)
-- The wait line outlives its last waiter by little: nobody asking means
-- nobody waiting. A waiter only ever lengthens it: one asking with a shorter
-- waiter TTL than the others (another replica's setting) must not expire
-- their places along with its own.
for _, key in ipairs({KEYS[2], KEYS[3]}) do
  if redis.call('PTTL', key) < 2 * waiter_ttl then
    redis.call('PEXPIRE', key, 2 * waiter_ttl)
  end
end
return {0, redis.call('ZRANK', KEYS[2], token), holder[1] or '', holder[2] or '', holder[3] or '', holder[4] or ''}
