-- Takes the lock when it is free; reports it taken when the same pull holds it.
-- ARGV: 1 lock value, 2 token, 3 pull base repo, 4 pull number
-- Returns {1, lock now held}, {0, current lock}, or {-1, stored value} when
-- the stored lock is corrupt, which is never overwritten.
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], ARGV[2])
  redis.call('SADD', KEYS[6], KEYS[1])
  return {1, ARGV[1]}
end
-- Indexing here also picks up locks an upstream replica created.
redis.call('SADD', KEYS[6], KEYS[1])
local lock = decode(current)
if not lock then
  return {-1, current}
end
if same_pull(lock, ARGV[3], ARGV[4]) then
  return {1, current}
end
return {0, current}
