-- debit.lua: check and commit one account's debit in one atomic step.
--
-- All keys share the account's hash tag ({ws:ID} or {u:ID}), so this runs unchanged on
-- Redis Cluster. A denial writes nothing. The same script runs on real Redis and on the
-- embedded store (fakeredis + lupa, Lua 5.1).
--
-- KEYS: 1 account hash   2 window hash   3 credit balance (micro-USD)
--       4 usage stream   5 request-id record   6 period-hash prefix ("…:p:")
--       7 daily-rollup prefix ("…:d:")
-- ARGV: 1 now_ms ("" = Redis TIME; tests inject a clock)
--       2 units            3 meter              4 pico-USD per unit
--       5 plan table for this meter (see gateway/metering/plans.py)
--       6 default plan name (used when the account has no plan of its own, "" = none)
--       7 the key's own windows "limit:window_ms:*,…" ("" = none)
--       8 buckets per window   9 request id ("" = not idempotent)
--      10 route   11 key id   12 user   13 test (0/1)   14 enforce (0 = shadow)
--      15 inactive policy: "deny" | "fallback"     16 key-window field prefix
--      17 replay (1: a journaled request served while the store was down; its time
--         has passed, so no window is checked or written)
--      18 usage-record retention in ms (0 = keep; see append_usage in lib.lua)
--      19 request fingerprint (method, path, meter, units): a request id names one request
--      20 1 when a later account may pay (the workspace leg of a cascade): a denial of an
--         idempotent request is remembered, so its retry cannot be charged here after the
--         next account paid for it
--      21 the request's id in the usage record (a settlement's record names it too)
--      22 1 when a settlement will follow (a reserve): the record says so ('open'), and
--         the reporter bills it together with its settlement
--      23 not after (Redis ms, "" = no limit): a call Redis runs later than this (it was
--         stalled, the gateway gave up and answered 503) changes nothing
--
-- Reply (flat array, see gateway/metering/verdict.py):
--  1 verdict 1 admit, 0 deny, 2 no plan (try the next account), 3 duplicate request id,
--    4 this account refused this request id before (try the next account),
--    5 the request id was used for another request, 6 too late (ARGV 23): nothing done,
--    7 the request id was repeated too often
--  2 code    3 throughput_ok  4 retry_after_ms  5 limit  6 remaining  7 reset_ms
--  8 window_ms  9 quota units  10 credit units  11 credit micro  12 overage units
--  13 overage micro  14 grace units  15 quota remaining  16 period  17 now_ms  18 plan
--  19 money_ok  20 scope of the binding window ("account" | "key")  21 period end ms
--  22 the debit's usage-record id (names its settlement)  23 enforce (0: shadow)
--  24 the plan's quota for this meter (-1: none)  25 budget cap, micro-USD (-1: none)
--  26 spend this period, micro-USD  27 1 when the key's own limit refused (the cascade stops)

local acct_key, win_key, credits_key, stream_key, rid_key, period_prefix, day_prefix =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]

local now = clock_ms(ARGV[1])

local units = tonumber(ARGV[2])
local meter = ARGV[3]
local pico = tonumber(ARGV[4])
local plan_table = ARGV[5]
local buckets = tonumber(ARGV[8])
local rid = ARGV[9]
local enforce = ARGV[14] == '1'

local function other(verdict, code)
  return {verdict, code, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, '', now, '', 1, 'account', 0,
    '', 1, -1, -1, 0, 0}
end

if ARGV[23] ~= '' then
  local real = now
  if ARGV[1] ~= '' then
    local t = redis.call('TIME')
    real = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  if real > tonumber(ARGV[23]) then return other(6, 'EXPIRED') end
end

-- A repeated request id returns the first result and charges nothing more; the id must
-- name the same request (fingerprint), and a refunded first attempt left no record. A
-- repeat still counts in the throughput windows (it runs on the upstream again), and an
-- id serves at most MAX_REPLAYS repeats: a retry, not a free pass.
local MAX_REPLAYS = 3
local dup = nil
if rid ~= '' then
  local prior = redis.call('HMGET', rid_key, 'reply', 'fp', 'passed', 'replays')
  if prior[2] and prior[2] ~= ARGV[19] then return other(5, 'REQUEST_ID_REUSED') end
  if prior[1] then
    if tonumber(prior[4] or '0') >= MAX_REPLAYS then return other(7, 'REQUEST_ID_REUSED') end
    dup = cjson.decode(prior[1])
    dup[1] = 3
  elseif prior[3] then
    return other(4, 'PASSED')
  end
end

-- Which plan applies: the account's own (if its subscription status admits), else the
-- default plan where configured.
local acct = redis.call('HMGET', acct_key, 'plan', 'status', 'past_due_until',
  'period_start', 'period_end', 'cap_micro', 'hard_cap')
local plan = acct[1] or nil   -- HMGET gives false for a missing field
local inactive = plan ~= nil and subscription_inactive(acct[2], acct[3], now)
if inactive and ARGV[15] == 'fallback' then plan = nil; inactive = false end
local own = plan ~= nil
-- "\n<plan> <quota> <overage 0|1> <grace %> <enforce 0|1> <windows> <key windows>";
-- quota -1 means the plan has no quota for this meter. A plan since removed from the
-- rules counts as no plan of its own (the default applies).
local s, e
if plan then s, e = string.find(plan_table, '\n' .. plan .. ' ', 1, true) end
if not s then
  if ARGV[6] == '' then return other(2, 'NO_PLAN') end
  plan = ARGV[6]
  own = false
  s, e = string.find(plan_table, '\n' .. plan .. ' ', 1, true)
  if not s then return other(2, 'NO_PLAN') end
end
-- (One anchored match reads the line's fields: no substring, no table.)
local quota_s, overage_s, grace_s, enforce_s, plan_windows, plan_key_windows =
  string.match(plan_table, '^(%S+) (%S+) (%S+) (%S+) ?(%S*) ?(%S*)', e + 1)
local quota = tonumber(quota_s)
local overage = overage_s == '1'
local grace_pct = tonumber(grace_s)
if enforce_s == '0' then enforce = false end
-- Per-key windows: the plan's (scope: key) and the key's own limit. They live in this
-- account's window hash under the key's prefix.
-- (A table written for fewer fields leaves the last ones empty: none.)
if plan_windows == '' then plan_windows = '-' end
if plan_key_windows == '-' then plan_key_windows = '' end
local key_windows = ARGV[7] .. ',' .. plan_key_windows

-- Shadow mode keeps counters of its own ("s"-prefixed windows and quota), so its
-- would-be decisions evolve as enforcement would, while nothing real is charged.
local sp = enforce and '' or 's'
local period, _, period_end = period_at(now, tonumber(acct[4] or ''), tonumber(acct[5] or ''),
  own and not inactive)
local period_key = period_prefix .. period

-- Throughput: sliding windows of `buckets` sub-buckets each (see docs/metering.md).
-- A window counts every bucket that overlaps the trailing window, so it can only
-- over-count (refuse early by at most one bucket's span), never over-admit.
local throughput_ok = true
local never = false
local retry_ms = 0
local g_limit, g_remaining, g_reset, g_window, g_scope = 0, 0, 0, 0, 'account'
local g_ratio = 2
local writes = {}
local new_bucket = false
local own_key_refused = false

-- A window "limit:window_ms:counts" counts the units of one meter, or of all ("*"):
-- windows of different meters never share buckets.
local function check(spec, prefix, scope)
  local refused = false
  for limit_s, window_s, counts in string.gmatch(spec, '(%d+):(%d+):([^,]+)') do
    local limit, window = tonumber(limit_s), tonumber(window_s)
    local st = window_open(win_key, prefix .. counts .. ':' .. window_s .. ':', window,
      buckets, now)
    local used, cur, width = st.used, st.cur, st.width
    local remaining = limit - used
    if units > limit then never = true end
    local ok = units <= remaining
    if not ok then
      throughput_ok = false
      refused = true
      -- Soonest time enough old buckets have slid out for this request to fit.
      local freed = 0
      for _, bu in ipairs(window_live(win_key, st, buckets)) do
        freed = freed + bu[2]
        if used - freed + units <= limit then
          local at = math.ceil((bu[1] + buckets + 1) * width)
          if at - now > retry_ms then retry_ms = at - now end
          break
        end
      end
    else
      writes[#writes + 1] = st
      if st.cur_units == 0 then new_bucket = true end
      remaining = remaining - units
    end
    -- The gauge reported in RateLimit headers: a refusing window, else the tightest.
    local ratio = ok and remaining / limit or -1
    if ratio < g_ratio then
      g_ratio = ratio
      g_limit, g_remaining, g_window, g_scope = limit, math.max(remaining, 0), window, scope
      g_reset = window_reset(st, buckets, now)
      if g_reset == 0 and ok then g_reset = math.ceil((cur + buckets + 1) * width) - now end
    end
  end
  return refused
end

if units > 0 and ARGV[17] ~= '1' then
  check(plan_windows, sp .. 'a:', 'account')
  -- The key's own limit is the key's, whoever pays: its refusal ends the cascade (reply
  -- field 27), or the next account would count the key afresh. A plan's per-key windows
  -- are that plan's rule, like its account windows.
  if string.find(ARGV[7], ':', 1, true) then
    own_key_refused = check(ARGV[7], sp .. ARGV[16], 'key')
  end
  if string.find(plan_key_windows, ':', 1, true) then
    check(plan_key_windows, sp .. ARGV[16], 'key')
  end
end

-- (Two windows with the same prefix, the same window twice, add once.)
local function commit_windows()
  local written = {}
  for _, st in ipairs(writes) do
    if not written[st.prefix] then
      written[st.prefix] = true
      window_add(win_key, st, st.cur, units, st.cur_units)
    end
  end
end

if dup then
  -- A repeat: only the windows (they may refuse it for now), no money.
  if not throughput_ok or never then
    return {0, never and 'COST_EXCEEDS_LIMIT' or 'RATE_LIMITED', 0, retry_ms, g_limit,
      g_remaining, g_reset, g_window, 0, 0, 0, 0, 0, 0, 0, dup[16], now, dup[18], 1, g_scope,
      dup[21], '', enforce and 1 or 0, -1, -1, 0, own_key_refused and 1 or 0}
  end
  if enforce then commit_windows() end
  redis.call('HINCRBY', rid_key, 'replays', 1)
  return dup
end

-- Money: plan quota -> prepaid credits -> overage (bounded by a hard cap) -> grace.
local route = ARGV[10]
-- (Read with the counters an admit adds to, so the admit writes them in one HSET.)
local ru_field = 'ru:' .. route .. ':' .. meter
local pf = redis.call('HMGET', period_key, sp .. 'q:' .. meter, sp .. 'g:' .. meter, 'spend',
  'rn:' .. route, 'u:' .. meter, 'n', ru_field, 'o:' .. meter)
-- The period hash gets its TTL when its first request on this route lands.
local period_is_new = pf[4] == false
local q_used, g_used, spend = tonumber(pf[1] or '0'), tonumber(pf[2] or '0'),
  tonumber(pf[3] or '0')
local q_total = quota > 0 and quota or 0
local take_q = math.min(units, math.max(q_total - q_used, 0))
local rest = units - take_q
local take_c, cm, take_o, om, take_g = 0, 0, 0, 0, 0
local cap = tonumber(acct[6] or '')
local hard = acct[7] == '1' and cap ~= nil
local capped = false
local balance = 0
if rest > 0 then
  balance = tonumber(redis.call('GET', credits_key) or '0')
  local cost = price_micro(rest, pico)
  if cost <= balance then
    if hard and spend + cost > cap then capped = true
    else take_c, cm, rest = rest, cost, 0 end
  end
end
if rest > 0 and overage then
  local cost = price_micro(rest, pico)
  if hard and spend + cost > cap then capped = true
  else take_o, om, rest = rest, cost, 0 end
end
if rest > 0 and grace_pct > 0 and q_total > 0 then
  local g_total = math.floor(q_total * grace_pct / 100)
  if rest <= g_total - g_used then take_g, rest = rest, 0 end
end
local money_ok = rest == 0
if inactive then money_ok = false end

local code = ''
if never then
  code = 'COST_EXCEEDS_LIMIT'
elseif inactive then
  code = 'SUBSCRIPTION_INACTIVE'
elseif not money_ok then
  if capped then code = 'BUDGET_HARD_CAP_HIT'
  elseif balance > 0 or q_total == 0 then code = 'INSUFFICIENT_CREDITS'
  else code = 'QUOTA_EXHAUSTED' end
elseif not throughput_ok then
  code = 'RATE_LIMITED'
end

-- What is left of the quota: after this request when it is admitted, as it stands when
-- it is refused (a refusal takes nothing).
local q_remaining = math.max(q_total - q_used, 0)
if code == '' then q_remaining = math.max(q_remaining - take_q, 0) end
local reply = {0, code, throughput_ok and 1 or 0, retry_ms, g_limit, g_remaining, g_reset,
  g_window, take_q, take_c, cm, take_o, om, take_g, q_remaining, period, now, plan,
  money_ok and 1 or 0, g_scope, period_end, '', enforce and 1 or 0, quota,
  cap or -1, spend, own_key_refused and 1 or 0}
if code ~= '' then
  -- A denial writes nothing but, on an account that may be followed by another, the
  -- memory of refusing this request id (see ARGV 20).
  if rid ~= '' and ARGV[20] == '1' and enforce then
    redis.call('HSET', rid_key, 'passed', '1', 'fp', ARGV[19])
    redis.call('PEXPIRE', rid_key, 86400000)
  end
  return reply
end

commit_windows()
-- The window hash's TTL only needs renewing when a new bucket starts (at most once per
-- bucket width); it outlives the longest window twice over.
if #writes > 0 and new_bucket then
  local longest = 0
  for window_s in string.gmatch(plan_windows .. ',' .. key_windows, '%d+:(%d+):') do
    if tonumber(window_s) > longest then longest = tonumber(window_s) end
  end
  redis.call('PEXPIRE', win_key, fmt(longest * 2))
end
if not enforce then
  -- Shadow admit: only the shadow counters move; verdict stays 0 with no code.
  if take_q > 0 then redis.call('HINCRBY', period_key, 'sq:' .. meter, take_q) end
  if take_g > 0 then redis.call('HINCRBY', period_key, 'sg:' .. meter, take_g) end
  if period_is_new then redis.call('PEXPIRE', period_key, 34214400000) end
  return reply
end
reply[1] = 1

-- The period's counters in one HSET of what was read plus this request (one call instead
-- of up to eight HINCRBYs; the script is atomic, so nothing moves in between). Counts
-- stay exact below 2^53, where Lua's numbers end.
local function plus(v, n) return fmt(tonumber(v or '0') + n) end
local counters = {'u:' .. meter, plus(pf[5], units), 'n', plus(pf[6], 1),
  ru_field, plus(pf[7], units), 'rn:' .. route, plus(pf[4], 1)}
local function also(field, value)
  counters[#counters + 1] = field
  counters[#counters + 1] = value
end
if take_q > 0 then also('q:' .. meter, fmt(q_used + take_q)) end
if take_g > 0 then also('g:' .. meter, fmt(g_used + take_g)) end
if take_o > 0 then also('o:' .. meter, plus(pf[8], take_o)) end
if cm + om > 0 then also('spend', fmt(spend + cm + om)) end
redis.call('HSET', period_key, unpack(counters))
if cm > 0 then redis.call('DECRBY', credits_key, fmt(cm)) end
-- Kept ~13 months: usage history outlives the period for invoices and disputes.
if period_is_new then redis.call('PEXPIRE', period_key, 34214400000) end

-- The day's rollup (platform usage and economics, gateway/admin/economics.py); test
-- keys count apart ('t' prefix). Kept as long as the period hashes.
local day_key = day_prefix .. day_at(now)
local tp = ARGV[13] == '1' and 't' or ''
if redis.call('HINCRBY', day_key, tp .. 'n:' .. meter, '1') == 1 then
  redis.call('PEXPIRE', day_key, 34214400000)
end
redis.call('HINCRBY', day_key, tp .. 'u:' .. meter, fmt(units))

-- The usage record: every field, every time (a stream stores a record whose fields are
-- those of its node's first one as values only; varying field sets cost more memory).
local record = {'kind', 'debit', 'rid', rid, 'meter', meter, 'units', fmt(units),
  'q', count(take_q), 'c', count(take_c), 'cm', count(cm), 'o', count(take_o),
  'om', count(om), 'g', count(take_g), 'period', period, 'route', route, 'key', ARGV[11],
  'user', ARGV[12], 'test', ARGV[13], 'plan', plan, 't', fmt(now), 'req', ARGV[21],
  'open', ARGV[22]}
reply[22] = append_usage(stream_key, tonumber(ARGV[18]), record, ARGV[1], now)

if rid ~= '' then
  redis.call('HSET', rid_key, 'reply', cjson.encode(reply), 'fp', ARGV[19])
  redis.call('PEXPIRE', rid_key, 86400000)
end
return reply
