-- Confirms a handled delivery: copies arriving for ARGV[2] ms are ignored.
-- ARGV: 1 record (payload hash), 2 record lifetime in ms, 3 cap
-- The event was handled, so the record is stored even when the claim lapsed
-- or was evicted meanwhile. A later expiry already there is kept.
check_records()
local now = now_ms()
drop_expired(now)
local expiry = now + tonumber(ARGV[2])
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not held then
  make_room(tonumber(ARGV[3]))
end
if not held or tonumber(held) < expiry then
  put(ARGV[1], expiry)
end
return expiry
