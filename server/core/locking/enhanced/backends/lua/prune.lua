-- Drops index entries whose lock no longer exists (deleted outside our
-- scripts: by an upstream replica or by hand). Checking and removing in one
-- script keeps an entry whose lock was taken again meanwhile.
-- KEYS: 1 index shard, 2.. lock keys of that shard's slot
check_types('set')
local removed = 0
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    removed = removed + redis.call('SREM', KEYS[1], KEYS[i])
  end
end
return removed
