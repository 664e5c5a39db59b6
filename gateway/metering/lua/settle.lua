-- settle.lua: move one admitted debit from its reserve to the actual amount.
--
-- Called once per admitted request whose cost changes after the response: a refund
-- (actual = 0: upstream failure) or a settlement (reserve -> what the upstream reported).
-- The gateway passes the pools the debit took, so the script needs no per-request
-- record; a "settled" marker named by the debit's usage-record id makes a repeat a no-op.
--
-- KEYS: 1 credit balance   2 usage stream   3 period hash   4 settle marker
--       5 daily-rollup prefix ("…:d:")   6 account hash   7 window hash
--       8 request-id record (deleted by a refund, so a retry is a new request)
-- ARGV: 1 now_ms ("" = TIME)  2 meter  3 pico/unit  4 units debited  5 quota units
--       6 credit units  7 credit micro  8 overage units  9 overage micro  10 grace units
--      11 actual units  12 quota total (plan, -1 none)  13 overage allowed (0/1)
--      14 kind ("settle" | "refund" | "replay")  15 route  16 model ("" none)  17 rid
--      18 key id  19 user  20 test  21 period  22 plan
--      23 the debit's time in ms (its day's rollup takes the change)
--      24 usage-record retention in ms (0 = keep)
--      25 the windows the debit counted in ("limit:window_ms:counts,…", "" = none)
--      26 the key windows it counted in    27 the key-window field prefix
--      28 buckets per window
-- Reply: {delta units, quota units, credit units, credit micro, overage units,
--         overage micro, grace units}  (the debit's pools after settlement)

local credits_key, stream_key, period_key, marker_key, day_prefix, acct_key, win_key,
  rid_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local now = clock_ms(ARGV[1])

local meter, pico = ARGV[2], tonumber(ARGV[3])
local units = tonumber(ARGV[4])
local q, c, cm, o, om, g = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]),
  tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local actual = tonumber(ARGV[11])
local quota, overage = tonumber(ARGV[12]), ARGV[13] == '1'
local debit_t = tonumber(ARGV[23])

if redis.call('SET', marker_key, '1', 'NX', 'PX', 3600000) == false then
  return {0, q, c, cm, o, om, g}  -- already settled: nothing more moves
end

local delta = actual - units
local d_q, d_c, d_cm, d_o, d_om, d_g = 0, 0, 0, 0, 0, 0
if delta < 0 then
  -- Give back in the reverse of the payment order: grace, overage, credits, quota.
  -- A money pool gives back units and the exact difference in micro-USD: the price of
  -- what it keeps, rounded up as when it was charged, minus what it charged.
  local back = -delta
  local function give_back(units_held, micro_held)
    local take = math.min(back, units_held)
    back = back - take
    if micro_held == nil or take == 0 then return -take, 0 end
    return -take, price_micro(units_held - take, pico) - micro_held
  end
  d_g = give_back(g)
  d_o, d_om = give_back(o, om)
  d_c, d_cm = give_back(c, cm)
  d_q = give_back(q)
elseif delta > 0 then
  -- The work is done: charge it. Quota, then credits, then overage, money only up to a
  -- hard budget cap; what no pool can pay is booked against the quota (used beyond its
  -- total), so the next request is refused instead of this one being lost.
  local more = delta
  local pf = redis.call('HMGET', period_key, 'q:' .. meter, 'spend')
  local q_used, spend = tonumber(pf[1] or '0'), tonumber(pf[2] or '0')
  local acct = redis.call('HMGET', acct_key, 'cap_micro', 'hard_cap')
  local cap = tonumber(acct[1] or '')
  local headroom = math.huge
  if acct[2] == '1' and cap then headroom = math.max(cap - spend, 0) end
  local avail = math.max((quota > 0 and quota or 0) - q_used, 0)
  local take = math.min(more, avail); d_q = take; more = more - take
  if more > 0 then
    local balance = tonumber(redis.call('GET', credits_key) or '0')
    local cost = price_micro(c + more, pico) - cm
    if cost <= balance and cost <= headroom then
      d_c = more; d_cm = cost; more = 0; headroom = headroom - cost
    end
  end
  if more > 0 and overage then
    -- As many units as the headroom pays for: the largest u with
    -- price(o + u) - om <= headroom (a binary search: the price only grows with u).
    local u = more
    if headroom ~= math.huge and price_micro(o + more, pico) - om > headroom then
      local lo, hi = 0, more - 1
      while lo < hi do
        local mid = math.ceil((lo + hi) / 2)
        if price_micro(o + mid, pico) - om <= headroom then lo = mid else hi = mid - 1 end
      end
      u = lo
    end
    if u > 0 then
      d_o = u
      d_om = price_micro(o + u, pico) - om
      more = more - u
    end
  end
  d_q = d_q + more
end

if d_q ~= 0 then redis.call('HINCRBY', period_key, 'q:' .. meter, d_q) end
if d_g ~= 0 then redis.call('HINCRBY', period_key, 'g:' .. meter, d_g) end
if d_o ~= 0 then redis.call('HINCRBY', period_key, 'o:' .. meter, d_o) end
if d_cm + d_om ~= 0 then redis.call('HINCRBY', period_key, 'spend', d_cm + d_om) end
if d_cm ~= 0 then redis.call('DECRBY', credits_key, d_cm) end
if delta ~= 0 then
  redis.call('HINCRBY', period_key, 'u:' .. meter, delta)
  redis.call('HINCRBY', period_key, 'ru:' .. ARGV[15] .. ':' .. meter, delta)
end

-- Throughput counts what was used: units given back leave the debit's bucket (while it
-- still counts), units charged beyond the reserve land in the current one. A request
-- that used more than its reserve can so take a window past its limit once; the window
-- then refuses until those units have slid out.
if delta ~= 0 then
  local buckets = tonumber(ARGV[28])
  local seen = {}
  local longest = 0
  local function adjust(spec, prefix)
    for _, window_s, counts in string.gmatch(spec, '(%d+):(%d+):([^,]+)') do
      local window = tonumber(window_s)
      local p = prefix .. counts .. ':' .. window_s .. ':'
      if not seen[p] then
        seen[p] = true
        if window > longest then longest = window end
        local st = window_open(win_key, p, window, buckets, now)
        local b = delta > 0 and st.cur or math.floor(debit_t / st.width)
        if b >= st.cur - buckets then  -- the bucket still counts
          local old = st.cur_units
          if b ~= st.cur then
            old = held(redis.call('HGET', win_key, p .. fmt(b % st.slots)), b)
          end
          window_add(win_key, st, b, delta, old)
        end
      end
    end
  end
  adjust(ARGV[25], 'a:')
  adjust(ARGV[26], ARGV[27])
  if delta > 0 and longest > 0 and redis.call('PTTL', win_key) < longest * 2 then
    redis.call('PEXPIRE', win_key, longest * 2)
  end
end

-- The rollup of the day the request was admitted, so a day's requests and units agree.
local day_key = day_prefix .. day_at(debit_t)
local tp = ARGV[20] == '1' and 't' or ''
if delta ~= 0 then redis.call('HINCRBY', day_key, tp .. 'u:' .. meter, delta) end
if ARGV[16] ~= '' then
  redis.call('HINCRBY', period_key, 'mu:' .. ARGV[16] .. ':' .. meter, actual)
  redis.call('HINCRBY', period_key, 'mn:' .. ARGV[16], 1)
  redis.call('HINCRBY', day_key, tp .. 'mu:' .. ARGV[16] .. ':' .. meter, actual)
  redis.call('HINCRBY', day_key, tp .. 'mn:' .. ARGV[16] .. ':' .. meter, 1)
end
-- A refunded request was not served: its id may be used again, and is charged then.
if ARGV[14] == 'refund' then redis.call('DEL', rid_key) end
append_usage(stream_key, tonumber(ARGV[24]), {'kind', ARGV[14], 'rid', ARGV[17],
  'meter', meter, 'units', fmt(delta), 'q', count(d_q), 'c', count(d_c), 'cm', count(d_cm),
  'o', count(d_o), 'om', count(d_om), 'g', count(d_g), 'period', ARGV[21],
  'route', ARGV[15], 'model', ARGV[16], 'key', ARGV[18], 'user', ARGV[19], 'test', ARGV[20],
  'plan', ARGV[22], 't', fmt(now), 'dt', ARGV[23], 'req', ARGV[17]}, ARGV[1], now)
return {delta, q + d_q, c + d_c, cm + d_cm, o + d_o, om + d_om, g + d_g}
