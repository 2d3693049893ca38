-- Claims a delivery before it is handled. The claim is short: if the replica
-- dies before confirming, it lapses and GitHub's redelivery is handled.
-- ARGV: 1 record (payload hash), 2 claim lifetime in ms, 3 cap
-- Returns the claim's expiry (unix ms) when this call claimed the record, or
-- 0 when it is already claimed or confirmed: a duplicate.
check_records()
local now = now_ms()
drop_expired(now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
local expiry = now + tonumber(ARGV[2])
make_room(tonumber(ARGV[3]))
put(ARGV[1], expiry)
return expiry
