-- Prepended to the delivery scripts. KEYS[1] is the set of webhook delivery
-- records: a sorted set, member the payload hash, score the record's expiry
-- (Redis server time, unix ms). It is one key, so in Redis Cluster every
-- script touches a single slot.
--
-- Reading TIME and then writing is allowed: Redis 7 replicates the commands a
-- script ran (ZADD, ZREM, ...), never the script itself, so a replica does not
-- evaluate TIME again and cannot diverge. Redis 5 and 6 do the same by default.
-- Taking the time from the server means the replicas' clocks never matter.
--
-- A script that writes calls check_records first: Redis keeps the writes a
-- script made before an error, so a key these scripts did not write stops it
-- before any.

-- check_records stops the script, having written nothing, when KEYS[1] is
-- not a set of records as these scripts keep it: another Redis type, or an
-- expiry no unix ms time reaches, which put's PEXPIREAT would refuse after
-- its ZADD.
local function check_records()
  local t = redis.call('TYPE', KEYS[1])['ok']
  if t ~= 'none' and t ~= 'zset' then
    error({err = 'CORRUPT a ' .. t .. ' where a zset belongs at key ' .. KEYS[1]})
  end
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if last[2] and not (tonumber(last[2]) < 2^53) then
    error({err = 'CORRUPT a record expiring past any unix ms time at key ' .. KEYS[1]})
  end
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A record whose expiry has passed is gone: it neither answers "duplicate"
-- nor counts against the cap.
local function drop_expired(now)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
end

-- The set never holds more than cap records, so its memory is bounded
-- whatever arrives. Room for one more is made by evicting the records that
-- would expire soonest, before adding, so the record being added always stays.
local function make_room(cap)
  local excess = redis.call('ZCARD', KEYS[1]) - cap + 1
  if excess > 0 then
    redis.call('ZPOPMIN', KEYS[1], excess)
  end
end

-- put stores the record until expiry. The key itself expires with its last
-- record, so a fleet that stops de-duplicating leaves nothing behind, and a
-- volatile-* maxmemory policy may evict this key before any lock (locks never
-- expire).
local function put(member, expiry)
  redis.call('ZADD', KEYS[1], string.format('%.0f', expiry), member)
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', tonumber(last[2])))
end
