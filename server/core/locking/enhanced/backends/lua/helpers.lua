-- Prepended to every lock script. All of them take the same KEYS, which hash
-- to one cluster slot:
--   KEYS[1] lock key (upstream's key, JSON of models.ProjectLock)
--   KEYS[2] owner token of the current acquisition
--   KEYS[3] waiter queue: ZSET token -> priority band + arrival
--   KEYS[4] waiter liveness deadlines: HASH token -> unix ms
--   KEYS[5] waiter lock values: HASH token -> JSON to install on handoff
--   KEYS[6] global index shard holding lock keys of this slot
--   KEYS[7] record of the last release, to answer a retried release

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
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

-- same_pull says whether a decoded lock belongs to the given pull.
local function same_pull(lock, repo, pull)
  local p = lock['Pull']
  local full = ''
  if type(p['BaseRepo']) == 'table' and type(p['BaseRepo']['FullName']) == 'string' then
    full = p['BaseRepo']['FullName']
  end
  return full == repo and tonumber(p['Num']) == tonumber(pull)
end

local function forget_waiter(token)
  redis.call('ZREM', KEYS[3], token)
  redis.call('HDEL', KEYS[4], token)
  redis.call('HDEL', KEYS[5], token)
end

-- handoff gives the lock to the best live waiter, or frees it when none is
-- alive. A waiter whose deadline passed has crashed or lost Redis: it is
-- dropped here, which is how a dead replica leaves the queue. The lock never
-- goes through a free state while a live waiter exists, so nobody can take it
-- in between. Returns the new holder's token, or false.
local function handoff(channel)
  local now = now_ms()
  while true do
    local head = redis.call('ZPOPMIN', KEYS[3])
    if #head == 0 then
      break
    end
    local token = head[1]
    local deadline = tonumber(redis.call('HGET', KEYS[4], token))
    local value = redis.call('HGET', KEYS[5], token)
    redis.call('HDEL', KEYS[4], token)
    redis.call('HDEL', KEYS[5], token)
    if deadline and value and deadline >= now then
      redis.call('SET', KEYS[1], value)
      redis.call('SET', KEYS[2], token)
      redis.call('SADD', KEYS[6], KEYS[1])
      redis.call('PUBLISH', channel, token)
      return token
    end
  end
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('SREM', KEYS[6], KEYS[1])
  return false
end
