-- claim.lua with fleet-wide flow limits (afterwork._lifecycle.FlowLimit): a job whose group
-- already has `limit` running jobs is passed over, and the jobs behind it may be claimed.
-- ARGV[4] worker, ARGV[5] lease ttl, ARGV[6] limit, ARGV[7] token prefix, ARGV[8] how
-- many of the claimed jobs begin here (see begin_claimed in common.lua),
-- ARGV[9] number of queues (0: all), the queues, then the number of excluded tasks and
-- those tasks, then the number of limited tasks and triples (task, limit, key argument or
-- "") of them, then quads (task, limit, per, key argument or "") of the rate-limited tasks
-- (afterwork._lifecycle.RateLimit).
-- The running jobs per group are counted from the records of the running jobs (P:leases),
-- whoever claimed them (a claim without limits, an in-process start), once per run: a
-- dead worker's jobs count until their leases are recovered, and not after.
local worker, ttl, limit, base = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local nbegin = tonumber(ARGV[8])
local nq = tonumber(ARGV[9])
local queues = {}
for i = 1, nq do queues[i] = ARGV[9 + i] end
if nq == 0 then queues = redis.call('SMEMBERS', P .. ':queues') end
-- Paused queues (P:paused) start nothing.
local open_queues = {}
for _, queue in ipairs(queues) do
  if redis.call('SISMEMBER', P .. ':paused', queue) == 0 then
    open_queues[#open_queues + 1] = queue
  end
end
queues = open_queues
local ne = tonumber(ARGV[10 + nq])
local excluded = {}
for i = 11 + nq, 10 + nq + ne do excluded[ARGV[i]] = true end
local nl = tonumber(ARGV[11 + nq + ne])
local limits = {}
for i = 12 + nq + ne, 11 + nq + ne + 3 * nl, 3 do
  limits[ARGV[i]] = {tonumber(ARGV[i + 1]), ARGV[i + 2]}
end
local rates = {}
for i = 12 + nq + ne + 3 * nl, #ARGV, 4 do
  rates[ARGV[i]] = {tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), ARGV[i + 3]}
end

-- The value of a job's key argument, JSON-encoded as afterwork._lifecycle.flow_group does.
local function key_value(id, name)
  local value = nil
  local ok, kwargs = pcall(cjson.decode, redis.call('HGET', jkey(id), 'kwargs') or '{}')
  if ok and type(kwargs) == 'table' then value = kwargs[name] end
  if value == nil then value = cjson.null end
  return cjson.encode(value)
end

-- Rate limits: a sliding log per group. P:starts:<group> holds the start times of the
-- group's attempts (stamped by apply.lua when an attempt begins); P:rpend:<group> the jobs
-- claimed and not started yet, which count as starting now. The decision is
-- afterwork._lifecycle.rate_next_start: a claim at `now` is admitted while fewer than
-- `limit` starts (pending ones included) are in the window (start + per > now); otherwise
-- the next may be at the `limit`-th most recent start + per.
local function rate_group(id, task)
  local r = rates[task]
  if r == nil then return nil end
  if r[3] == '' then return task end
  return task .. '\031' .. key_value(id, r[3])
end
local rate_seen = {}
local rate_pending = {}
local function rate_count(g, r)
  local n = rate_seen[g]
  if n == nil then
    local zkey = P .. ':starts:' .. g
    redis.call('ZREMRANGEBYSCORE', zkey, '-inf', fmt(now - r[2]))
    n = redis.call('ZCARD', zkey)
    rate_seen[g] = n
    local pending = 0
    for _, id in ipairs(redis.call('SMEMBERS', P .. ':rpend:' .. g)) do
      local f = fields(id, 'status', 'started')
      if f ~= nil and f[1] == 'running' and not f[2] then
        pending = pending + 1
      else -- released or recovered before it started
        redis.call('SREM', P .. ':rpend:' .. g, id)
      end
    end
    rate_pending[g] = pending
  end
  return n
end
local rate_next = nil
local function rate_full(g, r, extra)
  local begun = rate_count(g, r)
  local pending = rate_pending[g] + extra
  if begun + pending < r[1] then return false end
  local at = now + r[2] -- pending claims fill the window: they start now or later
  if pending < r[1] then
    local k = r[1] - pending
    local e = redis.call('ZRANGE', P .. ':starts:' .. g, -k, -k, 'WITHSCORES')
    local t = tonumber(e[2])
    if t < now - r[2] then t = now - r[2] end
    at = t + r[2]
  end
  if rate_next == nil or at < rate_next then rate_next = at end
  return true
end

-- The group of a job of a limited task (afterwork._lifecycle.flow_group), or nil.
local function group(id, task)
  local l = limits[task]
  if l == nil then return nil end
  if l[2] == '' then return task end
  local value = nil
  local ok, kwargs = pcall(cjson.decode, redis.call('HGET', jkey(id), 'kwargs') or '{}')
  if ok and type(kwargs) == 'table' then value = kwargs[l[2]] end
  if value == nil then value = cjson.null end
  return task .. '\031' .. cjson.encode(value)
end

-- Running jobs per group, counted from the running records when first needed (before
-- this run claims anything). `total` bounds every group's count: while `total` plus this
-- run's candidates stays under a cap, that cap cannot bind and nothing is counted.
local total = redis.call('ZCARD', P .. ':leases')
local used = nil
local function running(g)
  if used == nil then
    used = {}
    for _, id in ipairs(redis.call('ZRANGE', P .. ':leases', 0, -1)) do
      local f = fields(id, 'status', 'task')
      if f ~= nil and f[1] == 'running' and limits[f[2]] ~= nil then
        local h = group(id, f[2])
        used[h] = (used[h] or 0) + 1
      end
    end
  end
  return used[g] or 0
end

-- Promote due delayed jobs (retries included) to their ready queues.
local due = redis.call('ZRANGEBYSCORE', P .. ':delayed', '-inf', NOW, 'LIMIT', 0, 1000)
for _, id in ipairs(due) do
  local f = fields(id, 'status', 'queue', 'prio', 'run_at')
  if f == nil then
    quarantine(id, nil)
  else
    redis.call('ZREM', P .. ':delayed', id)
    if f[1] == 'scheduled' then -- life.promote: the status alone, no event
      redis.call('HSET', jkey(id), 'status', 'queued')
      count(f[2], 'scheduled', 'queued')
      ready(id, f[2], f[3], f[4])
    end
  end
end

-- The best `limit` candidates of each queue, then the best `limit` of them all. A job of a
-- full group is skipped; `taken` counts this claim's candidates per group and queue.
local candidates = {}
local skipped = 0
for _, queue in ipairs(queues) do
  local qkey = P .. ':q:' .. queue
  local offset, found, scanned = 0, 0, 0
  local taken = {}
  local rtaken = {}
  while found < limit and scanned < 5000 do
    local page = redis.call('ZRANGE', qkey, offset, offset + limit + 31, 'WITHSCORES')
    if #page == 0 then break end
    for k = 1, #page, 2 do
      local id = page[k]
      scanned = scanned + 1
      local f = fields(id, 'status', 'task', 'recov')
      if f == nil then
        quarantine(id, qkey)
      elseif f[1] ~= 'queued' then
        redis.call('ZREM', qkey, id) -- a stale entry
      elseif excluded[f[2]] then
        offset = offset + 1
        skipped = skipped + 1
      else
        offset = offset + 1
        local g = group(id, f[2])
        local cap = g ~= nil and limits[f[2]][1]
        local rg = rate_group(id, f[2])
        if rg ~= nil and rate_full(rg, rates[f[2]], rtaken[rg] or 0) then
          skipped = skipped + 1
        elseif g ~= nil and total + #candidates >= cap
          and running(g) + (taken[g] or 0) >= cap then
          skipped = skipped + 1
        elseif found < limit then
          if g ~= nil then taken[g] = (taken[g] or 0) + 1 end
          if rg ~= nil then rtaken[rg] = (rtaken[rg] or 0) + 1 end
          candidates[#candidates + 1] = {tonumber(page[k + 1]), id, qkey, queue, g, f[2], rg, f[3]}
          found = found + 1
        end
      end
    end
  end
end
table.sort(candidates, function(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return a[2] < b[2]
end)

-- Count before claiming (the claims below join P:leases) if a cap may bind.
for _, c in ipairs(candidates) do
  if c[5] ~= nil and total + #candidates >= limits[c[6]][1] then
    running(c[5])
    break
  end
end

local lease = fmt(now + ttl)
local out = {}
local picked = {} -- {id, queue, recov} in claim order
local claimed = {}
local rclaimed = {}
local starts = {}
for i = 1, #candidates do
  if #picked >= limit then break end
  local c = candidates[i]
  local id, g, rg = c[2], c[5], c[7]
  local cap = g ~= nil and limits[c[6]][1]
  -- The same group may be reached through several queues: count it across them.
  if rg ~= nil and rate_full(rg, rates[c[6]], rclaimed[rg] or 0) then
    skipped = skipped + 1
  elseif g == nil or total + #picked < cap or running(g) + (claimed[g] or 0) < cap then
    if rg ~= nil then
      rclaimed[rg] = (rclaimed[rg] or 0) + 1
      starts[#starts + 1] = {rg, rates[c[6]][2], id}
    end
    redis.call('ZREM', c[3], id)
    redis.call('HDEL', jkey(id), 'started', 'done_token')
    redis.call('HSET', jkey(id), 'status', 'running', 'worker', worker,
      'lease', lease, 'cancel', '0', 'token', base .. i)
    redis.call('ZADD', P .. ':leases', lease, id)
    count(c[4], 'queued', 'running')
    if g ~= nil then claimed[g] = (claimed[g] or 0) + 1 end
    picked[#picked + 1] = {id, c[4], c[8]}
  end
end
-- This claim's jobs join their groups' pending sets (after the decisions above, which
-- counted them as `extra`); apply.lua stamps each start when its attempt begins.
for _, s in ipairs(starts) do
  redis.call('SADD', P .. ':rpend:' .. s[1], s[3])
  redis.call('HSET', jkey(s[3]), 'rgrp', s[1], 'rper', fmt(s[2]))
end
-- The first `nbegin` begin here (a begun rate-limited job's start leaves the pending set
-- for its group's log: begin_claimed).
for i = 1, begins(picked, nbegin) do begin_claimed(picked[i][1], picked[i][2]) end
for i, c in ipairs(picked) do out[i] = record(c[1]) end
return {skipped, out, rate_next and fmt(rate_next) or '', #picked < limit and next_due() or ''}
