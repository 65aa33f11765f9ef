-- ARGV[4] worker, ARGV[5] lease ttl, ARGV[6] limit, ARGV[7] token prefix, ARGV[8] how
-- many of the claimed jobs begin here (see begin_claimed in common.lua),
-- ARGV[9] number of queues (0: all), the queues, then the excluded tasks.
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
local excluded = {}
for i = 10 + nq, #ARGV do excluded[ARGV[i]] = true end

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

-- The best `limit` candidates of each queue, then the best `limit` of them all.
local candidates = {}
local skipped = 0
for _, queue in ipairs(queues) do
  local qkey = P .. ':q:' .. queue
  local offset, found, scanned = 0, 0, 0
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
        if found < limit then
          candidates[#candidates + 1] = {tonumber(page[k + 1]), id, qkey, queue, f[3]}
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

local lease = fmt(now + ttl)
local claimed = {}
for i = 1, math.min(limit, #candidates) do
  local c = candidates[i]
  local id = c[2]
  redis.call('ZREM', c[3], id)
  -- life.claim: the lease, not the start (no attempt counted, no event); its change does
  -- not depend on the record, so it is applied as is.
  redis.call('HDEL', jkey(id), 'started', 'done_token')
  redis.call('HSET', jkey(id), 'status', 'running', 'worker', worker,
    'lease', lease, 'cancel', '0', 'token', base .. i)
  redis.call('ZADD', P .. ':leases', lease, id)
  count(c[4], 'queued', 'running')
  claimed[i] = {id, c[4], c[5]}
end
for i = 1, begins(claimed, nbegin) do begin_claimed(claimed[i][1], claimed[i][2]) end
local out = {}
for i, c in ipairs(claimed) do out[i] = record(c[1]) end
-- Fewer than asked: when the next delayed job falls due (an idle worker waits for that, or
-- a wake-up, without looking again).
return {skipped, out, '', #claimed < limit and next_due() or ''}
