-- Queues a pull, durably, for a lock another pull holds. A pull already
-- queued keeps its entry, place and expiry: an `atlantis plan` repeated while
-- waiting changes nothing. An entry that expired and was not swept yet holds
-- no place: it is replaced by a new arrival, without an expiry notice, whose
-- comment would tell the pull to plan again as it just did, beside the
-- comment of its new place.
-- ARGV: 1 token for a new entry, 2 the lock value it installs when handed the
--       lock (with that token), 3 pull base repo, 4 pull number, 5 headstart
--       us, 6 timeout ms, 7 priority
-- Returns {2, current lock or nil} when the lock is free or the pull's own,
-- and nothing was queued (the caller takes it); {-1, current} when the
-- stored lock is corrupt; else {joined (1 new, 0 already queued), token,
-- position (1 is the head), metadata, expiry ms, current lock}.
check_lock_keys()
local current = redis.call('GET', KEYS[1])
if not current then
  return {2}
end
local lock = decode(current)
if not lock then
  return {-1, current}
end
if same_pull(lock, ARGV[3], ARGV[4]) then
  return {2, current}
end

local pull = pull_id(ARGV[3], ARGV[4])
local now = math.floor(now_us() / 1000)
local token = redis.call('HGET', KEYS[8], 'p:' .. pull)
if token and not (redis.call('ZSCORE', KEYS[2], token) and alive(token, now)) then
  forget_waiter(token)
  redis.call('HDEL', KEYS[8], token, 'p:' .. pull)
  token = nil
end
local joined = 0
if not token then
  token = ARGV[1]
  joined = 1
  local deadline = now + tonumber(ARGV[6])
  local bound = tonumber(redis.call('HGET', KEYS[3], bound_field))
  if bound or redis.call('HLEN', KEYS[8]) == 0 then
    redis.call('HSET', KEYS[3], bound_field, math.min(bound or deadline, deadline))
  end
  redis.call('ZADD', KEYS[2], queue_score(ARGV[5]), token)
  redis.call('HSET', KEYS[4], token, ARGV[2])
  redis.call('HSET', KEYS[3], token, deadline)
  redis.call('HSET', KEYS[8], token, ARGV[7] .. '|' .. now .. '|' .. pull, 'p:' .. pull, token)
  redis.call('SADD', KEYS[11], KEYS[1])
end
return {joined, token, place(token, now), redis.call('HGET', KEYS[8], token), redis.call('HGET', KEYS[3], token), current}
