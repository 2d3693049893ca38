-- Removes a pull's durable entry for the lock, leaving no notice: the pull
-- itself left (closed, unlocked, or it asked to).
-- ARGV: 1 pull base repo, 2 pull number
-- Returns 1 when there was an entry, else 0.
check_lock_keys()
local token = redis.call('HGET', KEYS[8], 'p:' .. pull_id(ARGV[1], ARGV[2]))
forget_pull_entry(ARGV[1], ARGV[2])
if redis.call('HLEN', KEYS[8]) == 0 then
  redis.call('SREM', KEYS[11], KEYS[1])
end
if token then
  return 1
end
return 0
