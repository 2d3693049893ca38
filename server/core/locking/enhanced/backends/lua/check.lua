-- Prepended to every script of the Redis backend. Redis runs a script
-- atomically but keeps the writes it made before an error, so each script
-- checks what it reads before its first write: it does its whole job, or
-- writes nothing and fails with corrupt's error.

-- corrupt stops the script with an error naming the key and what is wrong
-- with it, which Go reports as enhanced.ErrCorruptLock (redis_errors.go).
-- what never quotes the stored value, so the key is the error's tail.
local function corrupt(key, what)
  error({err = 'CORRUPT ' .. what .. ' at key ' .. key})
end

-- check_types stops the script unless each KEYS[i] is missing or holds the
-- i-th type given: a command on a key of another type fails, and would fail
-- after the writes before it.
local function check_types(...)
  local want = {...}
  for i = 1, #want do
    local t = redis.call('TYPE', KEYS[i])['ok']
    if t ~= 'none' and t ~= want[i] then
      corrupt(KEYS[i], 'a ' .. t .. ' where a ' .. want[i] .. ' belongs')
    end
  end
end
