-- usage.lua: read one account's state for /usage/me and the admin API (writes nothing).
--
-- KEYS: 1 account hash  2 window hash  3 credit balance  4 period-hash prefix
-- ARGV: 1 now_ms ("" = TIME)  2 default plan ("" none)  3 windows by plan
--       ("\n<plan> <limit:ms:counts,…|->\n…")  4 buckets per window  5 inactive policy
-- Reply: {plan, status, period, start_ms, end_ms, credits, {period hash flat},
--         {limit, window_ms, used, reset_ms, counts, …}, now_ms}

local acct_key, win_key, credits_key, period_prefix = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = clock_ms(ARGV[1])
local buckets = tonumber(ARGV[4])
local acct = redis.call('HMGET', acct_key, 'plan', 'status', 'past_due_until',
  'period_start', 'period_end')
local plan, status = acct[1] or nil, acct[2] or 'active'
local inactive = plan ~= nil and subscription_inactive(acct[2], acct[3], now)
if inactive and ARGV[5] == 'fallback' then plan = nil; inactive = false end
-- A plan since removed from the rules counts as none (the debit script agrees).
if plan and not string.find(ARGV[3], '\n' .. plan .. ' ', 1, true) then plan = nil end
local own = plan ~= nil
if not plan and ARGV[2] ~= '' then plan = ARGV[2] end
plan = plan or ''

local period, p_start, p_end = period_at(now, tonumber(acct[4] or ''),
  tonumber(acct[5] or ''), own and not inactive)
local counters = redis.call('HGETALL', period_prefix .. period)
local credits = tonumber(redis.call('GET', credits_key) or '0')

local gauges = {}
local s, e = string.find(ARGV[3], '\n' .. plan .. ' ', 1, true)
if s then
  local line_end = string.find(ARGV[3], '\n', e + 1, true)
  local spec = string.sub(ARGV[3], e + 1, line_end - 1)
  for limit_s, window_s, counts in string.gmatch(spec, '(%d+):(%d+):([^,]+)') do
    local st = window_open(win_key, 'a:' .. counts .. ':' .. window_s .. ':',
      tonumber(window_s), buckets, now)
    gauges[#gauges + 1] = tonumber(limit_s)
    gauges[#gauges + 1] = tonumber(window_s)
    gauges[#gauges + 1] = st.used
    gauges[#gauges + 1] = window_reset(st, buckets, now)
    gauges[#gauges + 1] = counts
  end
end
return {plan, status, period, p_start, p_end, credits, counters, gauges, now}
