-- Forgets a claim whose event upstream did not take, so GitHub's redelivery
-- of it is handled.
-- KEYS[1]: the set of delivery records (see delivery_helpers.lua)
-- ARGV: 1 record (payload hash), 2 the claim's expiry, as the claim returned it
-- Compare-and-delete: the expiry is the claim's token. A record with another
-- expiry is not this claim (it lapsed, and another replica claimed or
-- confirmed the record since), and stays.
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if held and tonumber(held) == tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
