-- credits.lua: move prepaid credits once per Stripe object, atomically with its marker.
--
-- The marker shares the account's hash tag, so "already done?" and the balance change
-- are one step: a crash can neither grant twice nor lose a grant.
-- KEYS: 1 credit balance (micro-USD)   2 marker for this top-up session or charge
-- ARGV: 1 "grant" | "clawback"
--       2 micro-USD: grant = the amount; clawback = the cumulative total to have taken
--         back for this charge (Stripe's amount_refunded is cumulative)
-- Reply: {micro-USD applied now (0 when already done), balance}

local mode, amount = ARGV[1], tonumber(ARGV[2])
if mode == 'grant' then
  if not redis.call('SET', KEYS[2], ARGV[2], 'NX') then
    return {0, tonumber(redis.call('GET', KEYS[1]) or '0')}
  end
  return {amount, redis.call('INCRBY', KEYS[1], amount)}
end
local prev = tonumber(redis.call('GET', KEYS[2]) or '0')
if amount <= prev then
  return {0, tonumber(redis.call('GET', KEYS[1]) or '0')}
end
redis.call('SET', KEYS[2], ARGV[2])
-- The balance may go below zero (credits already spent): debt blocks credit use.
return {amount - prev, redis.call('DECRBY', KEYS[1], amount - prev)}
