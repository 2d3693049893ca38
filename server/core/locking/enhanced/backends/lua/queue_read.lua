-- Reads a lock and its line in one consistent step, head first: the members
-- that hold a place (see helpers.lua), never an expired entry.
-- ARGV: 1 pull base repo, 2 pull number: read only that pull's durable entry
--       (position included), or '' for the whole line
-- Returns {lock value or false, n, then per place: token, position,
-- deadline ms, lock value, metadata or false}.
check_lock_keys()
local current = redis.call('GET', KEYS[1])
local out = {current or false, 0}
local now = math.floor(now_us() / 1000)
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
  if token and redis.call('ZSCORE', KEYS[2], token) and alive(token, now) then
    add(token, place(token, now))
  end
  return out
end
local every = every_place(now)
for _, token in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if every or holds_place(token, now) then
    add(token, out[2] + 1)
  end
end
return out
