-- rotate_late.lua: close the current late-delta generation if it holds anything, so the
-- persister can apply it while new late events go to the next one.
--
-- KEYS[1]  X:{p:P}:wm  hash (field gen)
-- ARGV[1]  key base "X:{p:P}:" (late keys are base .. "late:" .. gen)
-- Returns  the generation now open for writes (all lower ones are closed), or -1 when the
--          watermarks hash is missing

local gen = redis.call('HGET', KEYS[1], 'gen')
if not gen then
  return -1
end
local late = ARGV[1] .. 'late:' .. gen
if redis.call('EXISTS', late) == 1 or redis.call('EXISTS', late .. ':hll') == 1 then
  return redis.call('HINCRBY', KEYS[1], 'gen', 1)
end
return tonumber(gen)
