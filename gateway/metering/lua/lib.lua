-- lib.lua: shared by every metering script (prepended at load time by scripts.py, so
-- each script is still one self-contained EVALSHA). One implementation of the clock,
-- the billing period and the window reading.

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

-- Days since 1970-01-01 of a civil date, and the civil date of a day number
-- (H. Hinnant's algorithms; integer arithmetic only).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

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
-- the next one is recorded: a renewal's quota comes with its paid invoice, not before.
local function period_at(now, p_start, p_end, extend)
  if p_start and p_end and now >= p_start and (now < p_end or extend) then
    return 's' .. fmt(p_start), p_start, p_end
  end
  local y, m = civil_from_days(math.floor(now / 86400000))
  local ny, nm = y, m + 1
  if nm > 12 then ny, nm = y + 1, 1 end
  return string.format('%04d-%02d', y, m), days_from_civil(y, m, 1) * 86400000,
    days_from_civil(ny, nm, 1) * 86400000
end

-- The UTC day of `ms` ("2026-11-18"): the key suffix of an account's daily rollup.
local function day_at(ms)
  return string.format('%04d-%02d-%02d', civil_from_days(math.floor(ms / 86400000)))
end

-- Usage records are kept `retention_ms` by Redis' own clock (which also stamps their
-- ids), whatever clock a test injects; the reporter deletes them sooner, once reported.
-- 0 keeps them forever. Returns the record's id.
local function append_usage(stream_key, retention_ms, record)
  if retention_ms > 0 then
    local t = redis.call('TIME')
    local cut = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - retention_ms
    return redis.call('XADD', stream_key, 'MINID', '~', fmt(cut), '*', unpack(record))
  end
  return redis.call('XADD', stream_key, '*', unpack(record))
end

-- One sliding window's state: the buckets overlapping the trailing window.
-- Field names: <prefix><window_ms>:<slot>, value "<bucket>:<units>", slot = bucket mod
-- (buckets + 1), so a window costs buckets+1 fields however long the account lives.
local function window_state(win_key, prefix, window, buckets, now)
  local width = window / buckets
  local cur = math.floor(now / width)
  -- Plain concatenation: these are small integers, which Lua prints exactly, and
  -- string.format costs more than the rest of the loop.
  local names, base, slots = {}, prefix .. window .. ':', buckets + 1
  for i = 0, buckets do
    names[i + 1] = base .. ((cur - i) % slots)
  end
  local vals = redis.call('HMGET', win_key, unpack(names))
  local used, live, cur_units = 0, {}, 0
  for i = 1, #vals do
    local v = vals[i]
    if v then
      local sep = string.find(v, ':', 1, true)
      local b = tonumber(string.sub(v, 1, sep - 1))
      local u = tonumber(string.sub(v, sep + 1))
      if b >= cur - buckets and b <= cur then
        used = used + u
        live[#live + 1] = {b, u}
        if b == cur then cur_units = u end
      end
    end
  end
  table.sort(live, function(a, b) return a[1] < b[1] end)
  return {used = used, live = live, cur = cur, cur_units = cur_units, width = width,
          field = names[1]}
end

-- When the oldest live bucket slides out (ms from now); 0 when nothing is counted.
local function window_reset(st, buckets, now)
  if #st.live == 0 then return 0 end
  return math.ceil((st.live[1][1] + buckets + 1) * st.width) - now
end
