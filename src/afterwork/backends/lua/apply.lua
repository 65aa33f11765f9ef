-- ARGV[4] a JSON array of changes computed by afterwork._lifecycle. The script decides
-- nothing: for each change it compares the fields the decision read (compare-and-set), writes
-- the fields the transition owns, keeps the indexes in step with the status, and publishes
-- the event. Returns one record per change, or 0 where the comparison failed.
--
-- A change: {id, expect = {field = value ("" = absent)}, set = {field = value}, del = {field},
-- token = new lease token?, done = token? (a finish: a repeat of the same finish returns the
-- record), keyfree = key? (the key must not be held by another unfinished job),
-- cancelpub = bool (tell the worker), event = kind?, message = text?, unstart = member?
-- (a start its claim began and the worker never ran: taken out of its rate group's log)}
local changes = cjson.decode(ARGV[4])
local out = {}

local function key_held_by_other(key, id)
  local holder = redis.call('GET', P .. ':key:' .. key)
  if not holder or holder == id then return false end
  local status = redis.call('HGET', jkey(holder), 'status')
  return status and not TERMINAL[status]
end

local function apply(c)
  local id = c.id
  local k = jkey(id)
  if redis.call('EXISTS', k) == 0 then return 0 end
  for field, want in pairs(c.expect) do
    local have = redis.call('HGET', k, field) or ''
    if have ~= want then
      if c.done and redis.call('HGET', k, 'done_token') == c.done then return record(id) end
      return 0
    end
  end
  if c.keyfree and key_held_by_other(c.keyfree, id) then return 0 end
  local f = redis.call('HMGET', k, 'status', 'queue')
  local old, queue = f[1], f[2]
  for field, value in pairs(c.set) do redis.call('HSET', k, field, value) end
  for _, field in ipairs(c.del) do redis.call('HDEL', k, field) end
  local g = redis.call('HMGET', k, 'status', 'prio', 'run_at', 'lease', 'key', 'ttl', 'task',
    'attempts', 'progress')
  local new = g[1]
  if old ~= new then count(queue, old, new) end
  -- Leave the indexes of the old state, join those of the new one.
  if old == 'queued' and new ~= 'queued' then redis.call('ZREM', P .. ':q:' .. queue, id) end
  if old == 'scheduled' and new ~= 'scheduled' then redis.call('ZREM', P .. ':delayed', id) end
  if old == 'running' and new ~= 'running' then
    redis.call('ZREM', P .. ':leases', id)
    redis.call('HDEL', k, 'token')
  end
  if new == 'queued' and old ~= 'queued' then ready(id, queue, g[2], g[3]) end
  if new == 'scheduled' and old ~= 'scheduled' then delay_until(id, tonumber(g[3])) end
  if new == 'running' then
    redis.call('ZADD', P .. ':leases', g[4], id)
    if c.token then redis.call('HSET', k, 'token', c.token) end
  end
  if TERMINAL[old] and not TERMINAL[new] then -- taken back by hand
    redis.call('PERSIST', k)
    redis.call('ZREM', P .. ':done', id)
    redis.call('ZREM', P .. ':expires', id)
    redis.call('HDEL', k, 'done_token')
    if g[5] then redis.call('SET', P .. ':key:' .. g[5], id) end
  end
  if TERMINAL[new] and not TERMINAL[old] then finalize(id, g[5], g[6]) end
  if c.done then redis.call('HSET', k, 'done_token', c.done) end
  if c.cancelpub then redis.call('PUBLISH', P .. ':cancel', id) end
  -- A rate-limited job (claim_flow.lua): its begun attempt's start joins the group's log;
  -- a job that stops running without starting leaves the pending set (and the log, if its
  -- claim began it: begin_claimed in common.lua).
  local rate = redis.call('HMGET', k, 'rgrp', 'rper', 'started')
  if rate[1] and (rate[3] or new ~= 'running') then
    redis.call('SREM', P .. ':rpend:' .. rate[1], id)
    if c.unstart then redis.call('ZREM', P .. ':starts:' .. rate[1], c.unstart) end
    if rate[3] and c.set.started then
      local zkey = P .. ':starts:' .. rate[1]
      redis.call('ZADD', zkey, rate[3], id .. ':' .. (g[8] or '0')) -- one per attempt
      redis.call('PEXPIRE', zkey, math.ceil(tonumber(rate[2]) * 1000) + 1000)
    end
    redis.call('HDEL', k, 'rgrp', 'rper')
  end
  if c.event then emit(c.event, id, g[7], queue, new, g[8], g[9], c.message) end
  return record(id)
end

for i, c in ipairs(changes) do out[i] = apply(c) end
publish_wake()
return out
