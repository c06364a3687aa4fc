-- trim_raw.lua: drop raw-log entries Postgres already holds and lower the backlog count.
--
-- KEYS[1]  X:{p:P}:raw  stream (entries have field n = number of events)
-- KEYS[2]  X:{p:P}:wm   hash (field rawn = events in the stream, never below 0)
-- ARGV[1]  last stream id copied to Postgres (inclusive)
-- Returns  number of events trimmed

local entries = redis.call('XRANGE', KEYS[1], '-', ARGV[1])
local events = 0
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'n' then
      events = events + tonumber(fields[i + 1])
    end
  end
  redis.call('XDEL', KEYS[1], entry[1])
end
if events > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  -- never below 0: a restore after the watermarks alone were lost starts rawn at 0 while
  -- the stream still holds entries (it is not scanned), and trimming those must not make
  -- the backlog negative
  local left = tonumber(redis.call('HGET', KEYS[2], 'rawn') or '0') - events
  if left < 0 then
    left = 0
  end
  redis.call('HSET', KEYS[2], 'rawn', string.format('%d', left))
end
return events
