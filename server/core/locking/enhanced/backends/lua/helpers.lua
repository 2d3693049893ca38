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
--   KEYS[8] durable queue entries: HASH token -> "priority|enqueued unix
--           ms|pull", and "p:" .. pull -> token, where pull is
--           "<base repo>#<number>" (a durable entry is a waiter that has
--           these fields; its deadline is its expiry)
--   KEYS[9] outbox of this slot: ZSET notice id -> unix ms it is due; also
--           the channel announcing new notices
--   KEYS[10] notices of this slot: HASH id -> notice, "c:" .. id -> claim,
--           "d:" .. id -> delivery steps done
--   KEYS[11] queues of this slot: SET of lock keys with durable entries
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

-- queue_score places a waiter: arrival on the server clock, microseconds
-- since 2023-11-14, minus its headstart (enhanced.Priority.Headstart). Both
-- stay below 2^53, so the score is exact.
local function queue_score(headstart_us)
  local t = redis.call('TIME')
  local arrival = (tonumber(t[1]) - 1700000000) * 1000000 + tonumber(t[2])
  return string.format('%.0f', arrival - tonumber(headstart_us))
end

local function pull_id(repo, num)
  return repo .. '#' .. num
end

-- entry_pull is the pull of a durable entry's metadata.
local function entry_pull(meta)
  return string.match(meta, '^[^|]*|[^|]*|(.*)$')
end

-- forget_entry removes a durable entry, which leaves no notice: its pull
-- left the queue itself.
local function forget_entry(token, meta)
  forget_waiter(token)
  redis.call('HDEL', KEYS[8], token, 'p:' .. entry_pull(meta))
end

-- forget_pull_entry removes the pull's durable entry, if any: a pull that
-- holds the lock has nothing to wait for.
local function forget_pull_entry(repo, num)
  local token = redis.call('HGET', KEYS[8], 'p:' .. pull_id(repo, num))
  if token then
    local meta = redis.call('HGET', KEYS[8], token)
    if meta then
      forget_entry(token, meta)
    else
      redis.call('HDEL', KEYS[8], 'p:' .. pull_id(repo, num))
    end
  end
end

-- The line. A member of a lock's queue holds a place in its line unless its
-- deadline passed (an expired entry, a crashed waiter: the next release or
-- sweep drops it) or it is a waiter of a pull whose durable entry holds a
-- place here: a queued pull planning again waits through its entry, whose
-- hand-over its waiter takes (handoff). Reads list and count places only.
-- KEYS[3]'s field '!' (tokens are base32, never '!') is, when known, a time
-- before which no durable entry expires: enqueue lowers it, sweep sets it,
-- so a queue without waiters is counted without a scan while it lies ahead.
local bound_field = '!'

local function alive(token, now)
  local deadline = tonumber(redis.call('HGET', KEYS[3], token))
  return deadline ~= nil and deadline >= now
end

-- lock_pull is the pull of a decoded lock.
local function lock_pull(lock)
  local p = lock['Pull']
  local repo = ''
  if type(p['BaseRepo']) == 'table' and type(p['BaseRepo']['FullName']) == 'string' then
    repo = p['BaseRepo']['FullName']
  end
  return pull_id(repo, string.format('%d', p['Num']))
end

-- waiter_pull is the pull of a live waiter (not a durable entry), or nil.
local function waiter_pull(token, now)
  if redis.call('HEXISTS', KEYS[8], token) == 1 or not alive(token, now) then
    return nil
  end
  local value = redis.call('HGET', KEYS[4], token)
  local lock = value and decode(value)
  return lock and lock_pull(lock)
end

local function has_waiters()
  return redis.call('ZCARD', KEYS[2]) * 2 ~= redis.call('HLEN', KEYS[8])
end

local function holds_place(token, now)
  if redis.call('HEXISTS', KEYS[8], token) == 1 then
    return alive(token, now)
  end
  local pull = waiter_pull(token, now)
  if not pull then
    return false
  end
  local entry = redis.call('HGET', KEYS[8], 'p:' .. pull)
  return not (entry and alive(entry, now))
end

-- every_place says, without a scan, that every member holds a place.
local function every_place(now)
  if has_waiters() then
    return false
  end
  if redis.call('HLEN', KEYS[8]) == 0 then
    return true
  end
  local bound = tonumber(redis.call('HGET', KEYS[3], bound_field))
  return bound ~= nil and bound >= now
end

-- place is the position of token, which holds a place: 1 for the head.
local function place(token, now)
  local rank = redis.call('ZRANK', KEYS[2], token)
  if rank == 0 or every_place(now) then
    return rank + 1
  end
  local position = 1
  for _, ahead in ipairs(redis.call('ZRANGE', KEYS[2], 0, rank - 1)) do
    if holds_place(ahead, now) then
      position = position + 1
    end
  end
  return position
end

-- waiter_of is a live waiter of pull, or nil.
local function waiter_of(pull, now)
  if not has_waiters() then
    return nil
  end
  for _, token in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    if waiter_pull(token, now) == pull then
      return token
    end
  end
  return nil
end

-- notify puts the notice of a durable entry that left its queue, handed the
-- lock or expired, in the outbox, in the step that made it leave. An entry
-- leaves once, so kind and token make a unique transfer id.
-- Notice: kind, lock key, token, metadata, expiry ms, at ms, lock value,
-- separated by newlines (none can contain one: JSON escapes it).
local function notify(kind, token, meta, deadline, value, now)
  local id = kind .. ':' .. token
  redis.call('HSET', KEYS[10], id, kind .. '\n' .. KEYS[1] .. '\n' .. token .. '\n' .. meta ..
    '\n' .. (deadline or '0') .. '\n' .. now .. '\n' .. (value or ''))
  redis.call('ZADD', KEYS[9], now, id)
  redis.call('PUBLISH', KEYS[9], id)
end

-- handoff ends the current holding: it gives the lock to the best live
-- waiter, or frees it when none is alive. A waiter whose deadline passed has
-- crashed or lost Redis, or, for a durable entry, waited its timeout out: it
-- is dropped here (an expired durable entry with a notice), which is how a
-- dead replica leaves the queue. The lock never goes through a free state
-- while a live waiter exists, so nobody can take it in between. A durable
-- entry handed the lock leaves a notice, in this same step, so the hand-over
-- is announced exactly once whatever happens to this replica next. An entry
-- of the releasing pull (released, the value given) is dropped: a pull is
-- never handed back what it gives up. A lock handed over is put in its index
-- shard again: the shard may have dropped it (List prunes the locks it finds
-- gone, as one deleted outside these scripts is until a sweep or a waiter
-- hands it over), and a held lock is always in its shard. A freed lock's
-- entry stays: List drops the entries of locks that are gone. Returns the
-- new holder's token, or false.
local function hand_to(channel, token, value)
  redis.call('SET', KEYS[1], value)
  redis.call('SADD', KEYS[5], KEYS[1])
  redis.call('PUBLISH', channel, token)
end

local function handoff(channel, released)
  local now = nil
  local releaser = nil
  while true do
    local head = redis.call('ZPOPMIN', KEYS[2])
    if #head == 0 then
      break
    end
    now = now or math.floor(now_us() / 1000)
    local token = head[1]
    local deadline = tonumber(redis.call('HGET', KEYS[3], token))
    local value = redis.call('HGET', KEYS[4], token)
    local meta = redis.call('HGET', KEYS[8], token)
    redis.call('HDEL', KEYS[3], token)
    redis.call('HDEL', KEYS[4], token)
    if meta then
      local pull = entry_pull(meta)
      redis.call('HDEL', KEYS[8], token, 'p:' .. pull)
      if released and releaser == nil then
        local lock = decode(released)
        releaser = lock and pull_id(lock['Pull']['BaseRepo'] and lock['Pull']['BaseRepo']['FullName'] or '',
          string.format('%d', lock['Pull']['Num'])) or false
      end
      if pull == releaser then
        -- its own pull let go: nothing to announce
      elseif deadline and value and deadline >= now then
        -- One place, one hand-over: a waiter of the pull takes it as its
        -- own request, so the lock names the waiter and the notice's
        -- delivery does not re-plan what the waiter's plan runs.
        local waiter = waiter_of(pull, now)
        if waiter then
          forget_waiter(waiter)
          hand_to(channel, waiter, with_token(value, waiter))
        else
          hand_to(channel, token, value)
        end
        notify('transferred', token, meta, deadline, value, now)
        return waiter or token
      else
        notify('expired', token, meta, deadline, value, now)
      end
    elseif deadline and value and deadline >= now then
      hand_to(channel, token, value)
      return token
    end
  end
  redis.call('DEL', KEYS[1])
  -- Nobody is left in line: nor is the expiry bound, which would keep the
  -- deadlines hash of a free lock.
  redis.call('HDEL', KEYS[3], bound_field)
  return false
end
