-- ingest.lua: apply one pre-grouped batch of events for one project, atomically.
--
-- KEYS[1]  X:{p:P}:wm   hash: m, h, d = sealed-until per grain (epoch ms); gen = late
--                       generation; rawn = events in the raw-log stream not yet in Postgres;
--                       rawlast = id of the last raw-log entry ever added
-- KEYS[2]  X:{p:P}:raw  stream: the raw log, one entry per batch (fields n, e)
-- ARGV[1]  key base "X:{p:P}:"; the other keys are derived from it exactly as
--          lua/keys.py names them (h:, u:, dirty:, id:, idem:, late:, card:, names:,
--          dimnames:)
-- ARGV[2]  msgpack array [dedupe_ttl_ms, backlog_cap, ids, groups, n_events, dim_cap,
--          dim_values, dim_ttl_ms, name_cap, names, dim_name_cap, dim_names, idem, idem_hash,
--          idem_reply, sealed, cells, minute_from, late_cells]
--            dedupe_ttl_ms  integer, milliseconds an event id (and an idempotency key) is
--                           remembered
--            backlog_cap    integer, events the raw log may hold (0 = no cap)
--            ids            array of event-id tokens to dedupe (lua/keys.py event_id_token of
--                           (name, id)), in batch order; marker id:<token>
--            groups         array of [minute start ms (string), field, count (integer), sum
--                           in millionths (string), uids]: one per (minute, field) of the
--                           batch. A hot minute takes all of it (seal.lua later merges the
--                           minute into its hour and day); a sealed minute's group goes to
--                           the minute's late delta and to its hour and day (hot, or late)
--            n_events       integer, events in the raw blob
--            dim_cap        integer, distinct values a dim may take per UTC day (0 = no cap)
--            dim_values     array of [dim, day start ms (string), value]: every distinct one
--                           in the batch; remembered in the set card:<dim>:<day>
--            dim_ttl_ms     integer, how long such a set (and a names set) lives after its
--                           last new member
--            name_cap       integer, distinct event names per UTC day (0 = no cap)
--            names          array of [day start ms (string), name]: every distinct one in the
--                           batch, in batch order; remembered in the set names:<day>
--            dim_name_cap   integer, distinct dim names per UTC day (0 = no cap)
--            dim_names      array of [day start ms (string), dim name]; set dimnames:<day>
--            idem           Idempotency-Key token (lua/keys.py idempotency_token), or ""
--            idem_hash      hex hash of the request body the key was first sent with
--            idem_reply     what to remember for a replay: "<idem_hash> <accepted> <dups>"
--            sealed         {m, h, d} the caller took as sealed-until per grain, or {}:
--                           the batch's events before m are not in groups but in cells and
--                           late_cells; refused with EDGE when a watermark is lower
--            cells          array of [grain (m, h or d), bucket start ms (string), field,
--                           count (integer), sum in millionths (string), uids]: those events
--                           rolled up per (grain, bucket, field) where the bucket is at or
--                           past sealed; each goes to its bucket hot if unsealed, else late
--            minute_from    integer, the oldest minute whose row is kept (minute_retention_days):
--                           a sealed minute before it takes no late delta (its hour and day do)
--            late_cells     flat array, per cell: count field, sketch member, count, sum
--                           in millionths (a string followed by the sum field, or the
--                           integer 0 for none), n, then n uids: the same for buckets below
--                           sealed, with their late-hash fields (<g>:<bucket>:c US field,
--                           <g>:<bucket>:s US field) and late:<gen>:hll member
--                           (<g>:<bucket>:field) spelled out; all go to the late generation
--                           (each field once per batch: counts are read and written 1,000
--                           fields a call, HMGET then HSET; sums, exact int64, by HINCRBY)
-- ARGV[3]  the batch's raw events (msgpack bytes), stored as one stream entry
-- ARGV[4]  on a Redis Cluster: the late generation the declared keys are of, else ""
-- ARGV[5]  on a Redis Cluster: hot_from (epoch ms; minutes at or after it were declared as
--          hot minutes only), or "" when every group's hot and late keys were declared
-- KEYS[3..] on a Redis Cluster: every other key this call may touch (lua/keys.py
--          ingest_keys, late keys of generation ARGV[4]), declared so that a call during a
--          resharding of the project's slot is redirected or refused as a whole; the
--          script derives the same names from ARGV[1] and does not read these
-- HOUR_MS, DAY_MS  bucket sizes (ms), defined by the prelude lua/__init__.py puts in front
--                   (from counters.core.buckets)
-- Returns (checks in this order; every answer but OK leaves Redis unchanged)
--   {"OK", late, m, h, d}   applied everything (and stored idem:<token> = idem_reply); late =
--                           writes that went to the late generation, m/h/d the watermarks
--   {"IDEM", stored}        the idempotency key was used before with this body: stored is
--                           its idem_reply; nothing applied
--   {"IDEMDIFF"}            the idempotency key was used before with another body
--   {"EDGE", m, h, d}       sealed is past a watermark: the caller plans again with these;
--                           nothing applied
--   {"DUP", i, ...}         1-based indexes into ids already seen; nothing applied
--   {"CAP", i, ...}         1-based indexes into dim_values over their dim's cap; the caller
--                           folds them into "__other__" and retries; nothing applied
--   {"NOWM"}                watermarks missing (Redis lost its state); nothing applied
--   {"GEN", gen}            ARGV[4] is not the open late generation gen; nothing applied
--   {"HOTEDGE"}             ARGV[5]'s minute, its hour or its day is sealed (a minute
--                           declared hot might not be); nothing applied
--   {"BACKLOG", rawn}       raw log over its cap; nothing applied
--   {"NAMECAP", i, ...}     1-based indexes into names that are new and do not fit the cap
--   {"DIMNAMECAP", i, ...}  the same for dim_names; nothing applied

local wm = redis.call('HMGET', KEYS[1], 'm', 'h', 'd', 'gen', 'rawn')
if not wm[1] or not wm[2] or not wm[3] or not wm[4] then
  return {'NOWM'}
end
local sealed = {m = tonumber(wm[1]), h = tonumber(wm[2]), d = tonumber(wm[3])}
local gen = wm[4]
if ARGV[4] and ARGV[4] ~= '' and ARGV[4] ~= gen then
  return {'GEN', gen}
end
local hot_from = tonumber(ARGV[5] or '')
if hot_from and (sealed.m > hot_from or sealed.h > hot_from - hot_from % HOUR_MS
                 or sealed.d > hot_from - hot_from % DAY_MS) then
  return {'HOTEDGE'}
end
local rawn = tonumber(wm[5] or '0')
local base = ARGV[1]
local p = cmsgpack.unpack(ARGV[2])
local ttl, cap, ids, groups, n_events = p[1], p[2], p[3], p[4], p[5]
local dim_cap, dim_values, dim_ttl = p[6], p[7], p[8]
local name_cap, names, dim_name_cap, dim_names = p[9], p[10], p[11], p[12]
local idem, idem_hash, idem_reply = p[13], p[14], p[15]
local edges, cells, minute_from, late_cells = p[16] or {}, p[17] or {}, p[18] or 0, p[19] or {}
local blob = ARGV[3]

local idem_key = nil
if idem ~= '' then
  idem_key = base .. 'idem:' .. idem
  local stored = redis.call('GET', idem_key)
  if stored then
    if string.sub(stored, 1, #idem_hash + 1) == idem_hash .. ' ' then
      return {'IDEM', stored}
    end
    return {'IDEMDIFF'}
  end
end

if #edges == 3 and (edges[1] > sealed.m or edges[2] > sealed.h or edges[3] > sealed.d) then
  return {'EDGE', wm[1], wm[2], wm[3]}
end

if cap > 0 and n_events > 0 and rawn + n_events > cap then
  return {'BACKLOG', rawn}
end

local dups = {'DUP'}
for i = 1, #ids do
  if redis.call('EXISTS', base .. 'id:' .. ids[i]) == 1 then
    dups[#dups + 1] = i
  end
end
if #dups > 1 then
  return dups
end

-- new members of per-day name sets within their cap, or the refusal listing those past it
local function admit_names(cap, list, kind, status)
  local new = {}
  if cap <= 0 then
    return new, nil
  end
  local over = {status}
  local sizes = {}
  for i, dn in ipairs(list) do
    local key = base .. kind .. ':' .. dn[1]
    if redis.call('SISMEMBER', key, dn[2]) == 0 then
      local n = sizes[key] or redis.call('SCARD', key)
      if n >= cap then
        over[#over + 1] = i
      else
        sizes[key] = n + 1
        new[#new + 1] = {key, dn[2]}
      end
    end
  end
  if #over > 1 then
    return new, over
  end
  return new, nil
end

local new_names, name_over = admit_names(name_cap, names, 'names', 'NAMECAP')
if name_over then
  return name_over
end
local new_dim_names, dim_name_over = admit_names(dim_name_cap, dim_names, 'dimnames', 'DIMNAMECAP')
if dim_name_over then
  return dim_name_over
end

local admit = {}
if dim_cap > 0 then
  local over = {'CAP'}
  local sizes = {}
  for i, dv in ipairs(dim_values) do
    local key = base .. 'card:' .. dv[1] .. ':' .. dv[2]
    if redis.call('SISMEMBER', key, dv[3]) == 0 then
      local n = sizes[key] or redis.call('SCARD', key)
      if n >= dim_cap then
        over[#over + 1] = i
      else
        sizes[key] = n + 1
        admit[#admit + 1] = {key, dv[3]}
      end
    end
  end
  if #over > 1 then
    return over
  end
end

for i = 1, #ids do
  redis.call('SET', base .. 'id:' .. ids[i], '1', 'PX', ttl)
end
for _, list in ipairs({admit, new_names, new_dim_names}) do
  for _, a in ipairs(list) do
    redis.call('SADD', a[1], a[2])
    redis.call('PEXPIRE', a[1], dim_ttl)
  end
end
if idem_key then
  redis.call('SET', idem_key, idem_reply, 'PX', ttl)
end

local function pfadd(key, uids)
  local n = #uids
  local step = 1000
  for i = 1, n, step do
    local j = i + step - 1
    if j > n then j = n end
    redis.call('PFADD', key, unpack(uids, i, j))
  end
end

local late = 0
local late_key = base .. 'late:' .. gen
local late_hll_index = late_key .. ':hll'
local late_members = {}

-- per (grain, bucket): the hot hash's key, or false when the bucket is sealed (late)
local hot_keys = {m = {}, h = {}, d = {}}
local function hot_key(grain, bucket)
  local known = hot_keys[grain][bucket]
  if known == nil then
    if tonumber(bucket) < sealed[grain] then
      known = false
    else
      known = base .. 'h:' .. grain .. ':' .. bucket
      redis.call('ZADD', base .. 'dirty:' .. grain, bucket, bucket)
    end
    hot_keys[grain][bucket] = known
  end
  return known
end

-- one group into one (grain, bucket): its hot hash and sketch, or the open late generation
local function add(grain, bucket, field, cfield, sfield, count, sum, uids)
  local hot = hot_key(grain, bucket)
  if hot then
    redis.call('HINCRBY', hot, cfield, count)
    if sfield then
      redis.call('HINCRBY', hot, sfield, sum)
    end
    if #uids > 0 then
      pfadd(base .. 'u:' .. grain .. ':' .. bucket .. ':' .. field, uids)
    end
  else
    late = late + 1
    local where = grain .. ':' .. bucket .. ':'
    redis.call('HINCRBY', late_key, where .. cfield, count)
    if sfield then
      redis.call('HINCRBY', late_key, where .. sfield, sum)
    end
    if #uids > 0 then
      pfadd(late_key .. ':u:' .. where .. field, uids)
      late_members[#late_members + 1] = where .. field
    end
  end
end

-- per minute: {hour, day, write hour now?, write day now?}. A hot minute reaches its hour
-- and day when seal.lua merges it; a sealed minute has been merged already, so its hour and
-- day take the event now (hot, or late). After watermarks were restored from Postgres an
-- hour (or day) can be sealed while a minute of it is hot: seal.lua will not merge into it,
-- so it takes the event now too (its late path).
local parents = {}
local function parents_of(minute)
  local p = parents[minute]
  if not p then
    local x = tonumber(minute)
    local hour, day = x - x % HOUR_MS, x - x % DAY_MS
    local hot = x >= sealed.m
    p = {string.format('%.0f', hour), string.format('%.0f', day),
         not hot or hour < sealed.h, not hot or day < sealed.d}
    parents[minute] = p
  end
  return p
end

for _, g in ipairs(groups) do
  local minute, field, count, sum, uids = g[1], g[2], g[3], g[4], g[5]
  local cfield = 'c\31' .. field
  local sfield = sum ~= '0' and ('s\31' .. field) or nil
  local p = parents_of(minute)
  local x = tonumber(minute)
  if x >= minute_from or x >= sealed.m then -- a sealed minute older than kept: no row
    add('m', minute, field, cfield, sfield, count, sum, uids)
  end
  if p[3] then
    add('h', p[1], field, cfield, sfield, count, sum, uids)
  end
  if p[4] then
    add('d', p[2], field, cfield, sfield, count, sum, uids)
  end
end

-- events of sealed minutes, rolled up by the caller per (grain, bucket, field)
for _, c in ipairs(cells) do
  local field, sum = c[3], c[5]
  add(c[1], c[2], field, 'c\31' .. field, sum ~= '0' and ('s\31' .. field) or nil, c[4], sum, c[6])
end
local late_u = late_key .. ':u:'
local cf, cn = {}, {}
local function flush_counts()
  if #cf == 0 then
    return
  end
  local old = redis.call('HMGET', late_key, unpack(cf))
  local args = {}
  for k = 1, #cf do
    args[2 * k - 1] = cf[k]
    args[2 * k] = string.format('%d', (tonumber(old[k]) or 0) + cn[k])
  end
  redis.call('HSET', late_key, unpack(args))
  cf, cn = {}, {}
end
local L, i, n_late = late_cells, 1, #late_cells
while i <= n_late do
  local member, sum = L[i + 1], L[i + 3]
  cf[#cf + 1] = L[i]
  cn[#cn + 1] = L[i + 2]
  if #cf == 1000 then
    flush_counts()
  end
  i = i + 4
  if sum ~= 0 then
    redis.call('HINCRBY', late_key, L[i], sum)
    i = i + 1
  end
  local nu = L[i]
  i = i + 1
  if nu > 0 then
    for j = i, i + nu - 1, 1000 do
      local k = j + 999
      if k > i + nu - 1 then k = i + nu - 1 end
      redis.call('PFADD', late_u .. member, unpack(L, j, k))
    end
    late_members[#late_members + 1] = member
    i = i + nu
  end
  late = late + 1
end
flush_counts()

for i = 1, #late_members, 1000 do
  local j = i + 999
  if j > #late_members then j = #late_members end
  redis.call('SADD', late_hll_index, unpack(late_members, i, j))
end

if n_events > 0 then
  local id = redis.call('XADD', KEYS[2], '*', 'n', n_events, 'e', blob)
  redis.call('HINCRBY', KEYS[1], 'rawn', n_events)
  redis.call('HSET', KEYS[1], 'rawlast', id)
end
return {'OK', late, wm[1], wm[2], wm[3]}
