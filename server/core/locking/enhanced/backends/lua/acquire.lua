-- Takes the lock when it is free; reports it taken when the same pull holds it.
-- ARGV: 1 lock value with this acquisition's token, 2 pull base repo,
--       3 pull number, 4 this acquisition's token
-- Returns {1, lock now held}, {0, current lock}, or {-1, stored value} when
-- the stored lock is corrupt, which is never overwritten. Running it again
-- with the same arguments answers the same (a lock it took is now held by
-- the same pull and is adopted again), so a call whose reply was lost can be
-- repeated to learn its outcome.
check_lock_keys()
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SADD', KEYS[5], KEYS[1])
  -- Free with an entry of this pull only when deleted outside these scripts:
  -- a pull that holds the lock does not wait for it.
  forget_pull_entry(ARGV[2], ARGV[3])
  return {1, ARGV[1]}
end
local lock = decode(current)
if not lock then
  return {-1, current}
end
-- Indexing here also picks up locks an upstream replica created.
redis.call('SADD', KEYS[5], KEYS[1])
if same_pull(lock, ARGV[2], ARGV[3]) then
  forget_pull_entry(ARGV[2], ARGV[3])
  return {1, adopt(current, ARGV[4])}
end
return {0, current}
