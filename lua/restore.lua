-- restore.lua: put back the watermarks and late generation from Postgres after Redis lost
-- them; does nothing when they are present (Postgres only ever lags Redis).
--
-- KEYS[1]  X:{p:P}:wm  hash
-- ARGV[1..3]  sealed-until for m, h, d (epoch ms), from Postgres
-- ARGV[4]     late generation to write into next (last applied + 1)
-- ARGV[5]     last raw-log stream id Postgres holds
-- Returns  1 when restored, 0 when the hash already existed

if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'm', ARGV[1], 'h', ARGV[2], 'd', ARGV[3], 'gen', ARGV[4], 'rawn', 0,
  'rawlast', ARGV[5])
return 1
