-- ratelimit_batch.lua: the pixel's group commit charges one batch in one call: each key's
-- bucket for that key's hits (one token a hit, as many as fit, in arrival order), then the
-- project's events bucket for the events of the hits that passed (all or nothing). The
-- buckets are lua/ratelimit.lua's (GCRA: one theoretical arrival time, epoch microseconds).
--
-- KEYS[1]..KEYS[k]  X:{p:P}:rl:key:<digest>, one per key with hits in the batch
-- KEYS[k+1]   X:{p:P}:rl:events
-- ARGV[1]     now, epoch ms; '' uses the server's TIME
-- ARGV[2..3]  key rate (tokens/s, > 0 when k > 0), key burst
-- ARGV[4..5]  events rate (0: off), events burst
-- ARGV[6]     events of hits charged to no key (the key limit is off)
-- ARGV[6+i]   key i's hits in arrival order: '1' a hit carrying an event, '0' one without
-- Returns     per key {passed, remaining, ms until full, ms before the next would pass (0
--             when all passed)}, then for the events {allowed 1|0, remaining, ms until
--             full, ms to wait (0 when allowed)}, all zeros when no event is charged
--
-- Atomic; a refused charge takes nothing. Same clamp and expiry as lua/ratelimit.lua: a TAT
-- more than one burst ahead is clamped to one burst; a key expires IDLE_MS after its
-- bucket is full again.

local IDLE_MS = 60000
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1]) * 1000
end

local function ms(us)
  return math.ceil(us / 1000)
end

-- the bucket's TAT (clamped, the clamp stored), its token interval and capacity in µs
local function load(key, rate, burst)
  local interval = 1000000 / rate
  local capacity = burst * interval
  local tat = tonumber(redis.call('GET', key) or '') or now
  if tat < now then
    tat = now
  elseif tat > now + capacity then
    tat = now + capacity
    redis.call('SET', key, string.format('%.0f', tat), 'PX', ms(capacity) + IDLE_MS)
  end
  return tat, interval, capacity
end

local function store(key, tat)
  redis.call('SET', key, string.format('%.0f', tat), 'PX', ms(tat - now) + IDLE_MS)
end

local out = {}
local events = tonumber(ARGV[6])
local k = #KEYS - 1
local key_rate, key_burst = tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, k do
  local hits = ARGV[6 + i]
  local cost = #hits
  local tat, interval, capacity = load(KEYS[i], key_rate, key_burst)
  local fit = math.floor((now + capacity - tat) / interval + 1e-9)
  local n = math.max(0, math.min(cost, fit))
  local new_tat = tat + n * interval
  if n > 0 then
    store(KEYS[i], new_tat)
  end
  local _, ones = string.sub(hits, 1, n):gsub('1', '')
  events = events + ones
  local wait = 0
  if n < cost then
    wait = math.max(1, ms(new_tat + interval - capacity - now))
  end
  local remaining = math.floor((capacity - (new_tat - now)) / interval + 1e-9)
  out[#out + 1] = n
  out[#out + 1] = remaining
  out[#out + 1] = ms(new_tat - now)
  out[#out + 1] = wait
end

local ev_rate, ev_burst = tonumber(ARGV[4]), tonumber(ARGV[5])
if ev_rate <= 0 or events == 0 then
  for _ = 1, 4 do
    out[#out + 1] = 0
  end
  return out
end
local ev_key = KEYS[k + 1]
local tat, interval, capacity = load(ev_key, ev_rate, ev_burst)
local new_tat = tat + events * interval
local allow_at = new_tat - capacity
if now < allow_at and tat > now then
  local wait = math.min(allow_at, tat) - now
  out[#out + 1] = 0
  out[#out + 1] = math.floor((capacity - (tat - now)) / interval)
  out[#out + 1] = ms(tat - now)
  out[#out + 1] = math.max(1, ms(wait))
  return out
end
if new_tat > now + capacity then
  new_tat = now + capacity
end
store(ev_key, new_tat)
out[#out + 1] = 1
out[#out + 1] = math.floor((capacity - (new_tat - now)) / interval + 1e-9)
out[#out + 1] = ms(new_tat - now)
out[#out + 1] = 0
return out
