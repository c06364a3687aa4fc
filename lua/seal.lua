-- seal.lua: advance the project's Redis watermarks; buckets below them become immutable
-- (ingest sends later events for them to the late-delta area). Sealing a minute first
-- merges its uniques sketches into its hour's and day's (ingest adds uids to the minute
-- only, while it is hot), so an hour is whole before its own watermark passes it.
--
-- KEYS[1]  X:{p:P}:wm        hash: m, h, d = sealed-until per grain (epoch ms)
-- KEYS[2]  X:{p:P}:dirty:m   sorted set: hot minute buckets (score = bucket start, ms)
-- ARGV[1..3]  new sealed-until (epoch ms) for m, h, d, in that order
-- ARGV[4]  key base "X:{p:P}:" (sketch keys u:<g>:<bucket>:<field>, hashes h:m:<bucket>)
-- ARGV[5]  merge budget: stop sealing minutes once this many sketches were merged (the
--          minute that crosses it is finished); h and d never pass the minutes sealed
-- Returns  {m, h, d} as now stored (never lowered), or {"NOWM"} when the hash is missing

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'NOWM'}
end
local base = ARGV[4]
local budget = tonumber(ARGV[5])
local HOUR, DAY = 3600000, 86400000

local cur_m = tonumber(redis.call('HGET', KEYS[1], 'm') or '0')
local new_m = tonumber(ARGV[1])
if new_m > cur_m then
  local merged = 0
  local minutes = redis.call('ZRANGEBYSCORE', KEYS[2], cur_m, '(' .. ARGV[1])
  for _, mb in ipairs(minutes) do
    if merged >= budget then
      new_m = tonumber(mb)
      break
    end
    local x = tonumber(mb)
    local hour = base .. 'u:h:' .. string.format('%.0f', x - x % HOUR) .. ':'
    local day = base .. 'u:d:' .. string.format('%.0f', x - x % DAY) .. ':'
    local src = base .. 'u:m:' .. mb .. ':'
    for _, f in ipairs(redis.call('HKEYS', base .. 'h:m:' .. mb)) do
      if string.sub(f, 1, 2) == 'c\31' then
        local field = string.sub(f, 3)
        if redis.call('EXISTS', src .. field) == 1 then
          redis.call('PFMERGE', hour .. field, src .. field)
          redis.call('PFMERGE', day .. field, src .. field)
          merged = merged + 1
        end
      end
    end
  end
  if new_m > cur_m then
    redis.call('HSET', KEYS[1], 'm', string.format('%.0f', new_m))
  end
end

local m = tonumber(redis.call('HGET', KEYS[1], 'm'))
local caps = {h = m - m % HOUR, d = m - m % DAY}
local out = {redis.call('HGET', KEYS[1], 'm')}
for i, name in ipairs({'h', 'd'}) do
  local cur = tonumber(redis.call('HGET', KEYS[1], name) or '0')
  local new = math.min(tonumber(ARGV[i + 1]), caps[name])
  if new > cur then
    redis.call('HSET', KEYS[1], name, string.format('%.0f', new))
    out[i + 1] = string.format('%.0f', new)
  else
    out[i + 1] = redis.call('HGET', KEYS[1], name)
  end
end
return out
