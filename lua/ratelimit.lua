-- ratelimit.lua: charge one token bucket (kept as GCRA: one theoretical arrival time).
--
-- KEYS[1]  X:{p:P}:rl:key:<digest> or X:{p:P}:rl:events  string: the bucket's theoretical
--          arrival time (TAT), epoch microseconds; the bucket is full when TAT <= now
-- ARGV[1]  rate: tokens refilled per second (> 0)
-- ARGV[2]  burst: the bucket's capacity in tokens (>= 1)
-- ARGV[3]  cost: tokens this request takes (>= 1)
-- ARGV[4]  now, epoch ms; '' uses the server's TIME (one clock for every worker and host)
-- ARGV[5]  optional: '1' charges ARGV[3] requests of one token each, as many as fit (the
--          pixel's group commit charges a batch's hits of one key in one call)
-- Returns  {allowed 1|0, remaining tokens after this request (floor),
--           ms until the bucket is full again, ms to wait before retrying (0 when allowed)};
--          with ARGV[5] = '1': {requests allowed 0..cost, remaining, ms until full, ms to
--          wait before the next request would pass (0 when all were allowed)}
--
-- Atomic; a refused request takes nothing. The key expires IDLE_MS after the bucket is full
-- again (a missing key is a full bucket), so idle buckets vanish. A TAT more than one burst ahead of now (the clock went
-- back) is clamped to one burst, and the clamp is stored. A request costing more than the burst passes only when the
-- bucket is full, and empties it.

local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now
if ARGV[4] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[4]) * 1000
end

local interval = 1000000 / rate          -- microseconds per token
local capacity = burst * interval        -- microseconds a full bucket holds
local IDLE_MS = 60000

local function ms(us)
  return math.ceil(us / 1000)
end

local tat = tonumber(redis.call('GET', KEYS[1]) or '') or now
if tat < now then
  tat = now
elseif tat > now + capacity then
  tat = now + capacity
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', ms(capacity) + IDLE_MS)
end

if ARGV[5] == '1' then
  local fit = math.floor((now + capacity - tat) / interval + 1e-9)
  local n = math.max(0, math.min(cost, fit))
  local new_tat = tat + n * interval
  if n > 0 then
    redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ms(new_tat - now) + IDLE_MS)
  end
  local remaining = math.floor((capacity - (new_tat - now)) / interval + 1e-9)
  local wait = 0
  if n < cost then
    wait = math.max(1, ms(new_tat + interval - capacity - now))
  end
  return {n, remaining, ms(new_tat - now), wait}
end

local new_tat = tat + cost * interval
local allow_at = new_tat - capacity      -- the earliest now at which this cost fits
if now < allow_at and tat > now then
  local wait = math.min(allow_at, tat) - now
  local remaining = math.floor((capacity - (tat - now)) / interval)
  return {0, remaining, ms(tat - now), math.max(1, ms(wait))}
end

if new_tat > now + capacity then
  new_tat = now + capacity
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ms(new_tat - now) + IDLE_MS)
local remaining = math.floor((capacity - (new_tat - now)) / interval + 1e-9)
return {1, remaining, ms(new_tat - now), 0}
