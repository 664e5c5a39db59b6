-- lib.lua: shared by every metering script (prepended at load time by scripts.py, so
-- each script is still one self-contained EVALSHA). One implementation of the clock,
-- the billing period and the window reading.

-- Numbers become strings here, not by `..` or by passing them to redis.call: Lua's own
-- conversion (and Redis') prints "%.14g"/"%.17g", several times the cost of "%d".
local function fmt(x) return string.format('%d', x) end

-- Exact ceil(a / b) for non-negative integers held in doubles (a < 2^53).
local function ceil_div(a, b)
  local q = math.floor(a / b)
  while q * b > a do q = q - 1 end
  while q * b < a do q = q + 1 end
  return q
end

-- The price of `units` at `pico` pico-USD each, in micro-USD rounded up, exactly: Lua
-- numbers are doubles, so units * pico itself could pass 2^53. The whole micro-USD part
-- of the unit price and its remainder are multiplied apart instead (units < 2^32, as the
-- rules and settlement allow, keeps both products exact).
local function price_micro(units, pico)
  local per_unit = math.floor(pico / 1000000)
  local rest = pico - per_unit * 1000000
  return units * per_unit + ceil_div(units * rest, 1000000)
end

-- Milliseconds: the injected clock when given (tests), else Redis TIME.
local function clock_ms(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The civil date of a day number since 1970-01-01 (H. Hinnant's algorithm; integer
-- arithmetic only).
local function civil_from_days(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return y, m, d
end

-- The UTC date of `ms` and its day number; the period and the day's rollup both want
-- it, so a script converts once (per day it looks at).
local civil_day, civil_y, civil_m, civil_d = nil, 0, 0, 0
local function civil_at(ms)
  local days = math.floor(ms / 86400000)
  if days ~= civil_day then
    civil_day = days
    civil_y, civil_m, civil_d = civil_from_days(days)
  end
  return civil_y, civil_m, civil_d, days
end

local function month_days(y, m)
  if m == 2 then
    return (y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0)) and 29 or 28
  end
  return (m == 4 or m == 6 or m == 9 or m == 11) and 30 or 31
end

-- Whether a subscription's status stops its plan: anything but active or trialing, and
-- past_due once its grace (past_due_until, ms) is over. No status (false from HMGET, as
-- a manual plan may have) is active.
local function subscription_inactive(status, past_due_until, now)
  if not status then return false end
  if status == 'past_due' then return now >= tonumber(past_due_until or '0') end
  return status ~= 'active' and status ~= 'trialing'
end

-- The billing period at `now`: the subscription's while it runs, else the UTC calendar
-- month. Returns the period id (a key suffix), its start and its end in ms. With
-- `extend` (the subscription's own plan applies) a period that has ended goes on until
-- the next one is recorded: a renewal's quota comes with its paid invoice, not before;
-- and a recorded period that has not begun yet (a renewal paid a moment before its
-- start, or clocks apart) is already the account's: the calendar month in between
-- would count that usage in neither period.
local function period_at(now, p_start, p_end, extend)
  if p_start and p_end and (extend or (now >= p_start and now < p_end)) then
    return 's' .. fmt(p_start), p_start, p_end
  end
  local y, m, d, days = civil_at(now)
  local start = (days - d + 1) * 86400000
  return string.format('%04d-%02d', y, m), start, start + month_days(y, m) * 86400000
end

-- The UTC day of `ms` ("2026-11-18"): the key suffix of an account's daily rollup.
local function day_at(ms)
  local y, m, d = civil_at(ms)
  return string.format('%04d-%02d-%02d', y, m, d)
end

-- A count for a usage record: most are 0 (the pools that paid nothing), and "0" needs
-- no formatting.
local function count(n)
  if n == 0 then return '0' end
  return fmt(n)
end

-- Usage records are kept `retention_ms` by Redis' own clock (which also stamps their
-- ids), whatever clock a test injects; the reporter deletes them sooner, once reported.
-- 0 keeps them forever. `clock` is the script's clock argument: when it is Redis' own
-- (""), `now` is that time already. Returns the record's id.
local function append_usage(stream_key, retention_ms, record, clock, now)
  if retention_ms > 0 then
    local real = now
    if clock ~= '' then
      local t = redis.call('TIME')
      real = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    end
    local cut = real - retention_ms
    return redis.call('XADD', stream_key, 'MINID', '~', fmt(cut), '*', unpack(record))
  end
  return redis.call('XADD', stream_key, '*', unpack(record))
end

-- Sliding windows (docs/metering.md). A window of `window` ms is `buckets` buckets of
-- width window / buckets. Its fields in the account's window hash, under the prefix P =
-- "<a:|sa:|k:<key>:><counts>:<window_ms>:", are
--   P .. slot  "<bucket>:<units>"  slot = bucket mod (buckets + 1): a stale slot is known
--              by its bucket number, so buckets + 1 fields serve for ever;
--   P .. 's'   "<last>:<used>:<first>"  the newest bucket written, the units of buckets
--              last - buckets .. last, and the oldest of those holding units (-1: none).
-- A request reads two fields, not buckets + 1: the buckets that slid out since `last`
-- are subtracted as they go, each read once when it does.

local function pair(v)  -- "<a>:<b>" -> a, b
  local a, b = string.match(v, '^(-?%d+):(-?%d+)')
  return tonumber(a), tonumber(b)
end

-- Units a bucket holds, from its slot's value (0 for a stale slot).
local function held(v, bucket)
  if not v then return 0 end
  local b, u = pair(v)
  if b == bucket then return u end
  return 0
end

-- A window as it stands at `now` (nothing written): used = the units of buckets
-- cur - buckets .. cur.
local function window_open(win_key, prefix, window, buckets, now)
  local width = window / buckets
  local slots = buckets + 1
  local cur = math.floor(now / width)
  local got = redis.call('HMGET', win_key, prefix .. 's', prefix .. fmt(cur % slots))
  local last, used, first = cur, 0, -1
  if got[1] then
    local l, u, f = string.match(got[1], '^(-?%d+):(-?%d+):(-?%d+)')
    last, used, first = tonumber(l), tonumber(u), tonumber(f)
    if last > cur then
      -- The clock stepped back: go on counting in the newest bucket (it slides out
      -- later, so this can only refuse early, never admit too much).
      cur = last
      got[2] = redis.call('HGET', win_key, prefix .. fmt(cur % slots))
    end
  end
  local cur_units = held(got[2], cur)
  if used > 0 and cur > last then
    -- Buckets last - buckets .. cur - buckets - 1 slid out.
    local lo, hi = last - buckets, cur - buckets - 1
    if hi >= last then
      used, first = 0, -1
    else
      local names = {}
      for b = lo, hi do names[#names + 1] = prefix .. fmt(b % slots) end
      local vals = redis.call('HMGET', win_key, unpack(names))
      for i = 1, #names do used = used - held(vals[i], lo + i - 1) end
      if used <= 0 then
        used, first = 0, -1
      elseif first <= hi then
        -- The oldest bucket holding units slid out: the next one is at most `last`.
        first = -1
        names = {}
        for b = hi + 1, last do names[#names + 1] = prefix .. fmt(b % slots) end
        vals = redis.call('HMGET', win_key, unpack(names))
        for i = 1, #names do
          if held(vals[i], hi + i) > 0 then first = hi + i; break end
        end
      end
    end
  end
  return {prefix = prefix, width = width, slots = slots, cur = cur, cur_units = cur_units,
          used = used, first = first}
end

-- Add `units` to bucket `b` of an open window (negative: give back, never below 0) and
-- record the window's new state. Returns the units actually moved.
local function window_add(win_key, st, b, units, old)
  local new = math.max(old + units, 0)
  local change = new - old
  if change == 0 then return 0 end
  local used = math.max(st.used + change, 0)
  local first = st.first
  if used == 0 then first = -1
  elseif change > 0 and (first < 0 or b < first) then first = b end
  redis.call('HSET', win_key, st.prefix .. fmt(b % st.slots), fmt(b) .. ':' .. fmt(new),
    st.prefix .. 's', fmt(st.cur) .. ':' .. fmt(used) .. ':' .. fmt(first))
  return change
end

-- The buckets of an open window holding units, oldest first: {{bucket, units}, …}
-- (read whole only when a request is refused, for its Retry-After).
local function window_live(win_key, st, buckets)
  local names = {}
  for b = st.cur - buckets, st.cur do names[#names + 1] = st.prefix .. fmt(b % st.slots) end
  local vals = redis.call('HMGET', win_key, unpack(names))
  local live = {}
  for i = 1, #names do
    local u = held(vals[i], st.cur - buckets + i - 1)
    if u > 0 then live[#live + 1] = {st.cur - buckets + i - 1, u} end
  end
  return live
end

-- When the oldest bucket holding units slides out (ms from now); 0 when none does.
local function window_reset(st, buckets, now)
  if st.first < 0 then return 0 end
  return math.ceil((st.first + buckets + 1) * st.width) - now
end
