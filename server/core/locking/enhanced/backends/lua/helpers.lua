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
--
-- Stored values. A key may hold what no script of ours wrote: a hand edit,
-- another tool, an older version. Every script checks its keys' types first
-- (check_lock_keys) and each value before it acts on it, so none stops half
-- way; what it does with a value it cannot read depends on whose right to
-- act depends on that value:
--   - a lock that is not a ProjectLock as JSON (decode): taking, adopting,
--     waiting for or queueing for it, and releasing it by pull
--     (UnlockIfOwnedByPull, UnlockByPull), need its holder, so they leave it
--     and answer {-1, value}; a release by key (Unlock, from the locks page)
--     needs none, so it frees it and hands it to the queue as it would any
--     lock;
--   - a waiter or durable entry whose deadline, lock value or metadata is not
--     as these scripts write them (entry): nobody could be handed the lock or
--     told anything through it, so a hand-over or a sweep drops it, without
--     a notice, as it drops a dead waiter;
--   - a key of another Redis type: the script writes nothing and fails,
--     naming the key (check.lua).
-- Reading scripts return what is stored; Go reports what it cannot decode,
-- naming the key.

-- check_lock_keys stops a lock script, before anything is written, when one
-- of its keys holds another type than the layout above.
local function check_lock_keys()
  check_types('string', 'zset', 'hash', 'hash', 'set', 'string', 'hash', 'hash', 'zset', 'hash', 'set')
end

-- now_us is Redis's clock in microseconds; below 2^53, so exact in Lua.
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- is_int says whether n is an integer Lua holds exactly and Go decodes into
-- an int: below 2^53 in magnitude (nan and inf are not).
local function is_int(n)
  return type(n) == 'number' and n == math.floor(n) and n > -2^53 and n < 2^53
end

-- absent_or says whether v is missing, JSON null, or of Lua type t.
local function absent_or(v, t)
  return v == nil or v == cjson.null or type(v) == t
end

-- decode returns the lock table, or nil when the stored value is not a
-- ProjectLock as JSON: the fields these scripts read must have the types Go
-- writes (a null base repo, as any writer but Go's encoder may leave, is
-- none).
local function decode(value)
  local ok, lock = pcall(cjson.decode, value)
  if not ok or type(lock) ~= 'table' or type(lock['Project']) ~= 'table' or type(lock['Pull']) ~= 'table' then
    return nil
  end
  local pull = lock['Pull']
  if not is_int(pull['Num']) or not absent_or(pull['BaseRepo'], 'table') then
    return nil
  end
  if type(pull['BaseRepo']) == 'table' and not absent_or(pull['BaseRepo']['FullName'], 'string') then
    return nil
  end
  return lock
end

local function pull_id(repo, num)
  return repo .. '#' .. num
end

-- pull_of is the pull ("<base repo>#<number>") of a decoded lock, as Go's
-- pullID names it: "#<number>" without a base repo.
local function pull_of(lock)
  local repo = lock['Pull']['BaseRepo']
  local name = ''
  if type(repo) == 'table' and type(repo['FullName']) == 'string' then
    name = repo['FullName']
  end
  return pull_id(name, string.format('%d', lock['Pull']['Num']))
end

-- same_pull says whether a decoded lock belongs to the given pull.
local function same_pull(lock, repo, num)
  return pull_of(lock) == pull_id(repo, num)
end

-- with_token returns a decoded lock's value owned by token: its token
-- replaced, or added when a replica without enhanced locking wrote it. A
-- token is the value's last field, as writtenByEnhanced reads it in Go.
local token_field = ',"EnhancedLockToken":"'
local function with_token(value, token)
  local body = string.match(value, '^(.*),"EnhancedLockToken":"[^"\\]*"}$') or string.match(value, '^(.*)}%s*$')
  return body .. token_field .. token .. '"}'
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

-- entry reads the waiter or durable entry of token, or returns nil when
-- nobody could be served through it: a deadline that is no integer, a lock
-- value that is not a lock, metadata (a durable entry's) not as enqueue.lua
-- writes it, or a token its notice could not carry. A durable entry has meta
-- and pull.
local function entry(token)
  local e = {
    deadline = tonumber(redis.call('HGET', KEYS[3], token)),
    value = redis.call('HGET', KEYS[4], token),
    meta = redis.call('HGET', KEYS[8], token),
  }
  if not is_int(e.deadline) or not e.value or not decode(e.value) then
    return nil
  end
  if e.meta then
    local priority, enqueued, pull = string.match(e.meta, '^(%-?%d+)|(%d+)|([^\n]+)$')
    if not pull or not is_int(tonumber(priority)) or not is_int(tonumber(enqueued))
        or string.find(token, '\n', 1, true) then
      return nil
    end
    e.pull = pull
  end
  return e
end

-- forget_entry removes the waiter or durable entry of token, which leaves no
-- notice. pull, when known, is a durable entry's: its pull's index field goes
-- too, if it names token.
local function forget_entry(token, pull)
  forget_waiter(token)
  redis.call('HDEL', KEYS[8], token)
  if pull and redis.call('HGET', KEYS[8], 'p:' .. pull) == token then
    redis.call('HDEL', KEYS[8], 'p:' .. pull)
  end
end

-- forget_pull_entry removes the pull's durable entry, if any: a pull that
-- holds the lock has nothing to wait for.
local function forget_pull_entry(repo, num)
  local pull = pull_id(repo, num)
  local token = redis.call('HGET', KEYS[8], 'p:' .. pull)
  if not token then
    return
  end
  -- A field naming another pull's entry (no script of ours wrote it) leaves
  -- that entry alone.
  local meta = redis.call('HGET', KEYS[8], token)
  if meta and string.match(meta, '^[^|]*|[^|]*|(.*)$') == pull then
    forget_entry(token, nil)
  end
  redis.call('HDEL', KEYS[8], 'p:' .. pull)
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

-- waiter_pull is the pull of a live waiter (not a durable entry), or nil.
local function waiter_pull(token, now)
  if redis.call('HEXISTS', KEYS[8], token) == 1 or not alive(token, now) then
    return nil
  end
  local value = redis.call('HGET', KEYS[4], token)
  local lock = value and decode(value)
  return lock and pull_of(lock)
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

-- notify puts the notice of a durable entry e that left its queue, handed the
-- lock or expired, in the outbox, in the step that made it leave. An entry
-- leaves once, so kind and token make a unique transfer id.
-- Notice: kind, lock key, token, metadata, expiry ms, at ms, lock value,
-- separated by newlines (entry keeps them out of all but the value, the
-- last).
local function notify(kind, token, e, now)
  local id = kind .. ':' .. token
  redis.call('HSET', KEYS[10], id, kind .. '\n' .. KEYS[1] .. '\n' .. token .. '\n' .. e.meta ..
    '\n' .. string.format('%.0f', e.deadline) .. '\n' .. string.format('%.0f', now) .. '\n' .. e.value)
  redis.call('ZADD', KEYS[9], now, id)
  redis.call('PUBLISH', KEYS[9], id)
end

-- handoff ends the current holding: it gives the lock to the best live
-- waiter, or frees it when none is alive. A waiter whose deadline passed has
-- crashed or lost Redis, or, for a durable entry, waited its timeout out: it
-- is dropped here (an expired durable entry with a notice), which is how a
-- dead replica leaves the queue; so is one nobody could be served through
-- (entry), without a notice. The lock never goes through a free state
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
    local e = entry(token)
    forget_entry(token, e and e.pull)
    if e and e.pull and released and releaser == nil then
      local lock = decode(released)
      releaser = lock and pull_of(lock) or false
    end
    if not e or e.pull and e.pull == releaser then
      -- nobody to serve through it, or its own pull let go: nothing to announce
    elseif e.deadline >= now then
      -- One place, one hand-over: a waiter of the entry's pull takes it as
      -- its own request, so the lock names the waiter and the notice's
      -- delivery does not re-plan what the waiter's plan runs.
      local waiter = e.pull and waiter_of(e.pull, now)
      if waiter then
        forget_waiter(waiter)
        hand_to(channel, waiter, with_token(e.value, waiter))
      else
        hand_to(channel, token, e.value)
      end
      if e.pull then
        notify('transferred', token, e, now)
      end
      return waiter or token
    elseif e.pull then
      notify('expired', token, e, now)
    end
  end
  redis.call('DEL', KEYS[1])
  -- Nobody is left in line: nor is the expiry bound, which would keep the
  -- deadlines hash of a free lock.
  redis.call('HDEL', KEYS[3], bound_field)
  return false
end
