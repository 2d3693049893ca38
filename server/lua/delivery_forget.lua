-- Forgets a claim whose event upstream did not take, so GitHub's redelivery
-- of it is handled.
-- KEYS[1]: the set of delivery records (see delivery_helpers.lua)
-- ARGV: 1 record (payload hash), 2 the claim's expiry, as the claim returned
--       it, or 0 when the claim's reply was lost, 3 claim lifetime in ms
-- Returns 1 when the claim was dropped, else 0.
-- Compare-and-delete: the expiry is the claim's token. A record with another
-- expiry is not this claim (it lapsed, and another replica claimed or
-- confirmed the record since), and stays. Without the token, any claim still
-- unconfirmed (expiring within a claim lifetime) is dropped, as a copy being
-- handled elsewhere at this instant may be handled again; a record confirmed
-- since expires far later, and stays.
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not held then
  return 0
end
held = tonumber(held)
local mine = held == tonumber(ARGV[2])
if tonumber(ARGV[2]) == 0 then
  mine = held <= now_ms() + tonumber(ARGV[3])
end
if mine then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
