-- claim.lua with fleet-wide flow limits (afterwork._lifecycle.FlowLimit): a job whose group
-- already has `limit` running jobs is passed over, and the jobs behind it may be claimed.
-- ARGV[4] worker, ARGV[5] lease ttl, ARGV[6] limit, ARGV[7] token prefix,
-- ARGV[8] number of queues (0: all), the queues, then the number of excluded tasks and
-- those tasks, then triples (task, limit, key argument or "") of the limited tasks.
-- The running jobs per group are counted from the records of the running jobs (P:leases),
-- whoever claimed them (a claim without limits, an in-process start), once per run: a
-- dead worker's jobs count until their leases are recovered, and not after.
local worker, ttl, limit, base = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local nq = tonumber(ARGV[8])
local queues = {}
for i = 1, nq do queues[i] = ARGV[8 + i] end
if nq == 0 then queues = redis.call('SMEMBERS', P .. ':queues') end
-- Paused queues (P:paused) start nothing.
local open_queues = {}
for _, queue in ipairs(queues) do
  if redis.call('SISMEMBER', P .. ':paused', queue) == 0 then
    open_queues[#open_queues + 1] = queue
  end
end
queues = open_queues
local ne = tonumber(ARGV[9 + nq])
local excluded = {}
for i = 10 + nq, 9 + nq + ne do excluded[ARGV[i]] = true end
local limits = {}
for i = 10 + nq + ne, #ARGV, 3 do
  limits[ARGV[i]] = {tonumber(ARGV[i + 1]), ARGV[i + 2]}
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
  while found < limit and scanned < 5000 do
    local page = redis.call('ZRANGE', qkey, offset, offset + limit + 31, 'WITHSCORES')
    if #page == 0 then break end
    for k = 1, #page, 2 do
      local id = page[k]
      scanned = scanned + 1
      local f = fields(id, 'status', 'task')
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
        if g ~= nil and total + #candidates >= cap
          and running(g) + (taken[g] or 0) >= cap then
          skipped = skipped + 1
        elseif found < limit then
          if g ~= nil then taken[g] = (taken[g] or 0) + 1 end
          candidates[#candidates + 1] = {tonumber(page[k + 1]), id, qkey, queue, g, f[2]}
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
local claimed = {}
for i = 1, #candidates do
  if #out >= limit then break end
  local c = candidates[i]
  local id, g = c[2], c[5]
  local cap = g ~= nil and limits[c[6]][1]
  -- The same group may be reached through several queues: count it across them.
  if g == nil or total + #out < cap or running(g) + (claimed[g] or 0) < cap then
    redis.call('ZREM', c[3], id)
    redis.call('HDEL', jkey(id), 'started', 'done_token')
    redis.call('HSET', jkey(id), 'status', 'running', 'worker', worker,
      'lease', lease, 'cancel', '0', 'token', base .. i)
    redis.call('ZADD', P .. ':leases', lease, id)
    count(c[4], 'queued', 'running')
    if g ~= nil then claimed[g] = (claimed[g] or 0) + 1 end
    out[#out + 1] = record(id)
  end
end
return {skipped, out}
