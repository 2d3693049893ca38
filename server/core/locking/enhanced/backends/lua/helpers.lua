-- Prepended to every lock script. All of them take the same KEYS, which hash
-- to one cluster slot:
--   KEYS[1] lock key (upstream's key; the value is upstream's JSON of the lock
--           plus the acquisition token, see redis_value.go)
--   KEYS[2] waiter queue: ZSET token -> priority band + arrival
--   KEYS[3] waiter liveness deadlines: HASH token -> unix ms
--   KEYS[4] waiter lock values: HASH token -> value to install on handoff
--   KEYS[5] global index shard holding lock keys of this slot
--   KEYS[6] record of the last release, to answer a retried release
--   KEYS[7] release times of this slot's locks: HASH lock key -> unix us
--
-- Ownership is judged from the lock value alone: an acquisition holds the
-- lock while the stored value is the one it wrote, whose token makes it
-- unique.

-- now_us is Redis's clock in microseconds; below 2^53, so exact in Lua.
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- decode returns the lock table, or nil when the stored value is not a
-- ProjectLock as JSON. Callers refuse to touch a corrupt lock.
local function decode(value)
  local ok, lock = pcall(cjson.decode, value)
  if ok and type(lock) == 'table' and type(lock['Project']) == 'table'
      and type(lock['Pull']) == 'table' and type(lock['Pull']['Num']) == 'number' then
    return lock
  end
  return nil
end

-- held_by returns the pull number of a stored lock, or nil when the value is
-- not a lock. The JSON comes from Go's encoder (ours or upstream's), which
-- writes "Pull":{"Num":<n>, with the pull's number first; a string inside
-- the lock cannot contain that text, whose quotes it would have to escape.
-- Any other writer's value is decoded in full.
local function held_by(value)
  local num = string.match(value, '"Pull":{"Num":(%d+),')
  if num then
    return tonumber(num)
  end
  local lock = decode(value)
  if lock then
    return tonumber(lock['Pull']['Num'])
  end
  return nil
end

-- same_pull says whether a decoded lock belongs to the given pull.
local function same_pull(lock, repo, pull)
  local p = lock['Pull']
  local full = ''
  if type(p['BaseRepo']) == 'table' and type(p['BaseRepo']['FullName']) == 'string' then
    full = p['BaseRepo']['FullName']
  end
  return full == repo and tonumber(p['Num']) == tonumber(pull)
end

-- with_token returns a lock value owned by token: the stored value with its
-- token replaced, or added when a replica without enhanced locking wrote it.
local token_field = ',"EnhancedLockToken":"'
local function with_token(value, token)
  local at = string.find(value, token_field, 1, true)
  if not at then
    at = string.find(value, '}%s*$')
  end
  return string.sub(value, 1, at - 1) .. token_field .. token .. '"}'
end

-- adopt makes the caller's acquisition the owner of a lock its pull already
-- holds, and returns the new value. An earlier acquisition of the pull that
-- is being given back (its caller failed) then no longer matches the stored
-- value, so giving it back cannot free the lock this caller now relies on.
local function adopt(current, token)
  local value = with_token(current, token)
  redis.call('SET', KEYS[1], value)
  return value
end

local function forget_waiter(token)
  redis.call('ZREM', KEYS[2], token)
  redis.call('HDEL', KEYS[3], token)
  redis.call('HDEL', KEYS[4], token)
end

-- handoff ends the current holding: it gives the lock to the best live
-- waiter, or frees it when none is alive. A waiter whose deadline passed has
-- crashed or lost Redis: it is dropped here, which is how a dead replica
-- leaves the queue. The lock never goes through a free state while a live
-- waiter exists, so nobody can take it in between. The lock's entry in its
-- index shard stays: List drops the entries of locks that are gone. Returns
-- the new holder's token, or false.
local function handoff(channel)
  local now = nil
  while true do
    local head = redis.call('ZPOPMIN', KEYS[2])
    if #head == 0 then
      break
    end
    now = now or math.floor(now_us() / 1000)
    local token = head[1]
    local deadline = tonumber(redis.call('HGET', KEYS[3], token))
    local value = redis.call('HGET', KEYS[4], token)
    redis.call('HDEL', KEYS[3], token)
    redis.call('HDEL', KEYS[4], token)
    if deadline and value and deadline >= now then
      redis.call('SET', KEYS[1], value)
      redis.call('PUBLISH', channel, token)
      return token
    end
  end
  redis.call('DEL', KEYS[1])
  return false
end
