-- seal.lua: advance the project's Redis watermarks; buckets below them become immutable
-- (ingest sends later events for them to the late-delta area).
--
-- KEYS[1]  X:{p:P}:wm  hash: m, h, d = sealed-until per grain (epoch ms)
-- ARGV     new sealed-until (epoch ms) for m, h, d, in that order
-- Returns  {m, h, d} as now stored (never lowered), or {"NOWM"} when the hash is missing

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'NOWM'}
end
local names = {'m', 'h', 'd'}
local out = {}
for i, name in ipairs(names) do
  local cur = tonumber(redis.call('HGET', KEYS[1], name) or '0')
  local new = tonumber(ARGV[i])
  if new > cur then
    redis.call('HSET', KEYS[1], name, ARGV[i])
    out[i] = ARGV[i]
  else
    out[i] = redis.call('HGET', KEYS[1], name)
  end
end
return out
