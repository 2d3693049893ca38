-- Reads a lock and its queue in one consistent step, head first.
-- ARGV: 1 pull base repo, 2 pull number: read only that pull's durable entry
--       (position included), or '' for the whole queue
-- Returns {lock value or false, n, then per waiter: token, position,
-- deadline ms, lock value, metadata or false}.
check_lock_keys()
local current = redis.call('GET', KEYS[1])
local out = {current or false, 0}
local function add(token, position)
  out[2] = out[2] + 1
  table.insert(out, token)
  table.insert(out, position)
  table.insert(out, redis.call('HGET', KEYS[3], token) or '0')
  table.insert(out, redis.call('HGET', KEYS[4], token) or '')
  table.insert(out, redis.call('HGET', KEYS[8], token) or false)
end
if ARGV[1] ~= '' then
  local token = redis.call('HGET', KEYS[8], 'p:' .. pull_id(ARGV[1], ARGV[2]))
  local rank = token and redis.call('ZRANK', KEYS[2], token)
  if rank then
    add(token, rank + 1)
  end
  return out
end
for i, token in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  add(token, i)
end
return out
