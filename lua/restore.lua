-- restore.lua: after Redis lost a project's state, put back in one atomic step what
-- counters/engines/restore.py staged from Postgres (each unsealed hour's and day's part
-- already persisted as minute and hour rows: hashes and sketches exactly as seal.lua would
-- have left them), their dirty:h / dirty:d entries, and then the watermarks and late
-- generation. Only the first restorer does it: when the watermarks hash exists (another
-- restorer won, or it was never lost) the staged keys are deleted and nothing else changes,
-- so the persisted part is added once. Ingest and seal answer NOWM until this has run.
--
-- KEYS[1]  X:{p:P}:wm                      hash: the watermarks
-- KEYS[2]  X:{p:P}:restore:<token>:index   set: suffix of every staged key (h:<g>:<bucket>,
--                                           u:<g>:<bucket>:<field>); optional, as are
--                                           ARGV[6..8] (without them: watermarks only)
-- ARGV[1..3]  sealed-until for m, h, d (epoch ms), from Postgres
-- ARGV[4]     late generation to write into next (last applied + 1)
-- ARGV[5]     last raw-log stream id Postgres holds
-- ARGV[6]     key base "X:{p:P}:" (live key = base .. suffix; dirty:<g>)
-- ARGV[7]     staging base "X:{p:P}:restore:<token>:" (staged key = staging base .. suffix)
-- ARGV[8]     number of keys the restorer staged (a smaller index means some expired)
-- Returns  1 when restored, 0 when the hash already existed (staged keys dropped), -1 when
--          staged keys are missing (expired: nothing changed, stage again)

local base, stage = ARGV[6], ARGV[7]
local staged = {}
if KEYS[2] then
  staged = redis.call('SMEMBERS', KEYS[2])
end

local function drop()
  for _, s in ipairs(staged) do
    redis.call('DEL', stage .. s)
  end
  if KEYS[2] then
    redis.call('DEL', KEYS[2])
  end
end

if redis.call('EXISTS', KEYS[1]) == 1 then
  drop()
  return 0
end
if #staged ~= tonumber(ARGV[8] or '0') then
  drop()
  return -1
end
for _, s in ipairs(staged) do
  if redis.call('EXISTS', stage .. s) == 0 then
    drop()
    return -1
  end
end
for _, s in ipairs(staged) do
  local live = base .. s
  -- a live key can only exist if the watermarks alone were lost (Redis kept the rest): it
  -- then already holds everything staged, so it is kept as it is
  if redis.call('EXISTS', live) == 0 then
    redis.call('RENAME', stage .. s, live)
    redis.call('PERSIST', live)
  else
    redis.call('DEL', stage .. s)
  end
  local grain, bucket = string.match(s, '^h:(%a):(%-?%d+)$')
  if grain then
    redis.call('ZADD', base .. 'dirty:' .. grain, bucket, bucket)
  end
end
if KEYS[2] then
  redis.call('DEL', KEYS[2])
end
redis.call('HSET', KEYS[1], 'm', ARGV[1], 'h', ARGV[2], 'd', ARGV[3], 'gen', ARGV[4], 'rawn', 0,
  'rawlast', ARGV[5])
return 1
