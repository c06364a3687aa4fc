-- seal.lua: advance the project's Redis watermarks; buckets below them become immutable
-- (ingest sends later events for them to the late-delta area). Ingest writes a hot event
-- to its minute only; sealing a minute first merges it into its hour and day (counts and
-- sums added, uniques sketches united), so an hour is whole before its own watermark
-- passes it, and reads of a hot hour or day add the minutes not merged yet (read_hot.lua).
--
-- KEYS[1]  X:{p:P}:wm        hash: m, h, d = sealed-until per grain (epoch ms)
-- KEYS[2]  X:{p:P}:dirty:m   sorted set: hot minute buckets (score = bucket start, ms)
-- ARGV[1..3]  new sealed-until (epoch ms) for m, h, d, in that order
-- ARGV[4]  key base "X:{p:P}:" (hashes h:<g>:<bucket>, sketches u:<g>:<bucket>:<field>,
--          dirty index dirty:<g>)
-- ARGV[5]  merge budget: stop sealing minutes once this many hash fields were merged (the
--          minute that crosses it is finished); h and d never pass the minutes sealed
-- HOUR_MS, DAY_MS  bucket sizes (ms), from the prelude lua/__init__.py puts in front
-- Returns  {m, h, d} as now stored (never lowered), or {"NOWM"} when the hash is missing

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'NOWM'}
end
local base = ARGV[4]
local budget = tonumber(ARGV[5])

local cur_m = tonumber(redis.call('HGET', KEYS[1], 'm') or '0')
local cur_h = tonumber(redis.call('HGET', KEYS[1], 'h') or '0')
local cur_d = tonumber(redis.call('HGET', KEYS[1], 'd') or '0')
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
    local hour_b = string.format('%.0f', x - x % HOUR_MS)
    local day_b = string.format('%.0f', x - x % DAY_MS)
    -- an hour or day sealed already (only after watermarks were restored from Postgres)
    -- took this minute's events through ingest's late path: do not merge into it
    local to_h, to_d = x - x % HOUR_MS >= cur_h, x - x % DAY_MS >= cur_d
    local hour_h, day_h = base .. 'h:h:' .. hour_b, base .. 'h:d:' .. day_b
    local hour_u, day_u = base .. 'u:h:' .. hour_b .. ':', base .. 'u:d:' .. day_b .. ':'
    local src = base .. 'u:m:' .. mb .. ':'
    local flat = redis.call('HGETALL', base .. 'h:m:' .. mb)
    for i = 1, #flat, 2 do
      local f, v = flat[i], flat[i + 1]
      if to_h then
        redis.call('HINCRBY', hour_h, f, v)
      end
      if to_d then
        redis.call('HINCRBY', day_h, f, v)
      end
      if string.sub(f, 1, 2) == 'c\31' then
        local field = string.sub(f, 3)
        if redis.call('EXISTS', src .. field) == 1 then
          if to_h then
            redis.call('PFMERGE', hour_u .. field, src .. field)
          end
          if to_d then
            redis.call('PFMERGE', day_u .. field, src .. field)
          end
        end
      end
      merged = merged + 1
    end
    if #flat > 0 and to_h then
      redis.call('ZADD', base .. 'dirty:h', hour_b, hour_b)
    end
    if #flat > 0 and to_d then
      redis.call('ZADD', base .. 'dirty:d', day_b, day_b)
    end
  end
  if new_m > cur_m then
    redis.call('HSET', KEYS[1], 'm', string.format('%.0f', new_m))
  end
end

local m = tonumber(redis.call('HGET', KEYS[1], 'm'))
local caps = {h = m - m % HOUR_MS, d = m - m % DAY_MS}
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
