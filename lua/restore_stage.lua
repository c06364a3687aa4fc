-- restore_stage.lua: one chunk of a restore's staging (counters/engines/restore.py), in one
-- call instead of one command per row: unite stored sketches into staged sketches, add
-- counts and sums into staged hashes, PFADD uids of replayed raw events, and set dedupe
-- markers. Staged keys live under the restore's base with a TTL and are named in its index;
-- lua/restore.lua moves them into place later.
--
-- KEYS[1]  X:{p:P}:restore:<token>:index  set: suffix of every staged key
-- KEYS[2]  X:{p:P}:tmp:restore:<token>    scratch key for one sketch at a time
-- ARGV[1]  staging base "X:{p:P}:restore:<token>:" (staged key = base .. suffix)
-- ARGV[2]  TTL of staged keys, ms
-- ARGV[3]  key base "X:{p:P}:" (dedupe markers id:<token>, lua/keys.py event_id_token)
-- ARGV[4]  msgpack array [sketches, increments, uids, markers]:
--            sketches    [[suffix, n], ...]: ARGV[4 + n] (an HLL blob as GET returns it;
--                        blobs are not msgpack strings) united into the staged key
--            increments  [[suffix, hash field, integer delta], ...]: HINCRBY
--            uids        [[suffix, uid, ...], ...]: PFADD
--            markers     [[token, ttl ms], ...]: SET id:<token> 1 PX ttl NX
-- ARGV[5 ..]  the sketch blobs
-- Returns  number of markers set

local stage, ttl, base = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local payload = cmsgpack.unpack(ARGV[4])
local touched = {}

local function touch(suffix)
  if not touched[suffix] then
    touched[suffix] = true
    redis.call('SADD', KEYS[1], suffix)
  end
end

for _, s in ipairs(payload[1]) do
  local key, blob = stage .. s[1], ARGV[4 + s[2]]
  if redis.call('EXISTS', key) == 0 then
    redis.call('SET', key, blob)
  else
    redis.call('SET', KEYS[2], blob)
    redis.call('PFMERGE', key, KEYS[2])
  end
  touch(s[1])
end
for _, s in ipairs(payload[2]) do
  redis.call('HINCRBY', stage .. s[1], s[2], s[3])
  touch(s[1])
end
for _, s in ipairs(payload[3]) do
  local step = 1000
  for i = 2, #s, step do
    local j = math.min(i + step - 1, #s)
    redis.call('PFADD', stage .. s[1], unpack(s, i, j))
  end
  touch(s[1])
end
for suffix in pairs(touched) do
  redis.call('PEXPIRE', stage .. suffix, ttl)
end
if next(touched) then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
redis.call('DEL', KEYS[2])

local set = 0
for _, m in ipairs(payload[4]) do
  if redis.call('SET', base .. 'id:' .. m[1], '1', 'PX', m[2], 'NX') then
    set = set + 1
  end
end
return set
