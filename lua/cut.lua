-- cut.lua: one consistent cut of a project's write stream, for rebuild and reconcile.
-- Closes the open late-delta generation and reads, in the same atomic step, the sealed
-- watermarks and the raw log's last entry id. Every event counted before the cut has a
-- stream id <= that id; every later event for a bucket below the watermarks lands in a
-- generation above the one returned.
--
-- KEYS[1]  X:{p:P}:wm   hash: m, h, d (sealed-until, epoch ms), gen, rawlast (id of the
--                       last raw-log entry ever added; the stream itself is trimmed)
-- KEYS[2]  X:{p:P}:raw  stream (not read; declared so the script names its slot's keys)
-- ARGV     none
-- Returns  {last closed generation, m, h, d, last stream id ("0-0" when empty)}, or
--          {"NOWM"} when the watermarks are missing

local wm = redis.call('HMGET', KEYS[1], 'm', 'h', 'd', 'gen', 'rawlast')
if not wm[1] or not wm[4] then
  return {'NOWM'}
end
redis.call('HINCRBY', KEYS[1], 'gen', 1)
return {tonumber(wm[4]), wm[1], wm[2], wm[3], wm[5] or '0-0'}
