-- Reports whether a record stands (1) or not (0), storing nothing.
-- ARGV: 1 record (payload hash)
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if expiry and tonumber(expiry) > now_ms() then
  return 1
end
return 0
