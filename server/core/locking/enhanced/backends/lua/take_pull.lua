-- Moves a pull's index into its closing set and returns the closing set. An
-- UnlockByPull that fails part way leaves the closing set for the next one,
-- so no entry is lost; entries added meanwhile stay in the index.
-- KEYS: 1 pull index, 2 closing set (same slot)
check_types('set', 'set')
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SUNIONSTORE', KEYS[2], KEYS[1], KEYS[2])
  redis.call('DEL', KEYS[1])
end
return redis.call('SMEMBERS', KEYS[2])
