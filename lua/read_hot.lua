-- read_hot.lua: the Redis part of a read, in one atomic step with respect to seal.lua.
-- Ingest writes hot events to their minute only and seal.lua merges a minute into its
-- hour and day when it seals it, so a hot hour or day is its own hash plus the hashes of
-- its minutes not sealed yet. Reading them together here means a minute is counted either
-- in its hour or on its own, never both and never neither.
--
-- KEYS[1]  X:{p:P}:wm       hash: m = minutes sealed until (epoch ms)
-- KEYS[2]  X:{p:P}:dirty:m  sorted set: minute buckets holding data (score = start, ms)
-- ARGV[1]  key base "X:{p:P}:" (hashes h:<g>:<bucket>)
-- ARGV[2]  F, the number of hash fields to read (0: whole hashes, as HGETALL)
-- ARGV[3 .. 2+F]  the hash fields
-- ARGV[3+F ..]    cells "<g>:<bucket start ms>", g = m | h | d
-- HOUR_MS, DAY_MS  bucket sizes (ms), from the prelude lua/__init__.py puts in front
-- Returns  one entry per cell: {minutes, own, minute_1, ...}: minutes = the hot minute
--          buckets (strings) inside an hour or day cell, ascending; own and each minute_i
--          = HMGET of the F fields, or the flat HGETALL when F is 0

local base = ARGV[1]
local nfields = tonumber(ARGV[2])
local fields = {}
for i = 1, nfields do
  fields[i] = ARGV[2 + i]
end
local sealed = tonumber(redis.call('HGET', KEYS[1], 'm') or '0')
local SIZE = {h = HOUR_MS, d = DAY_MS}

local function read(key)
  if nfields == 0 then
    return redis.call('HGETALL', key)
  end
  return redis.call('HMGET', key, unpack(fields))
end

local out = {}
for i = 3 + nfields, #ARGV do
  local grain, bucket = string.match(ARGV[i], '^(%a):(%d+)$')
  local entry = {{}, read(base .. 'h:' .. grain .. ':' .. bucket)}
  local size = SIZE[grain]
  if size then
    local start = tonumber(bucket)
    local from = math.max(start, sealed)
    local minutes = redis.call(
      'ZRANGEBYSCORE', KEYS[2], string.format('%.0f', from),
      '(' .. string.format('%.0f', start + size))
    entry[1] = minutes
    for _, m in ipairs(minutes) do
      entry[#entry + 1] = read(base .. 'h:m:' .. m)
    end
  end
  out[#out + 1] = entry
end
return out
