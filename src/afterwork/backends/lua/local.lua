-- A group of jobs run in this process whose records were kept back (write-behind of plain
-- callables), written in one call: each job as start.lua creates it, at the time it really
-- started, then (if it ended, or a cancel was asked) the change apply.lua would write, at
-- its own time. ARGV[4] is a JSON array of
--   {job = the 12 arguments of job_args, worker, token, ttl = lease ttl, at = start time,
--    change = nil or {set, del, event?, message?, done?, cancelpub?, at = its time}}
-- A job already stored (this call repeated after its reply was lost) is not created again;
-- its change is applied only while it still runs under the same token. Returns, per job,
-- its record if it is still running, else 0.
local items = cjson.decode(ARGV[4])
for _, r in ipairs(items) do -- check everything before the first write: all or nothing
  if type(r.job) ~= 'table' or #r.job ~= 12 or not tonumber(r.at) or not tonumber(r.ttl)
    or type(r.token) ~= 'string' or type(r.worker) ~= 'string'
    or (r.change and not tonumber(r.change.at)) then
    return redis.error_reply('malformed write-behind record')
  end
end

local function create(r)
  local j = r.job
  local id, task, queue = j[1], j[2], j[3]
  local lease = fmt(now + tonumber(r.ttl))
  local h = {'id', id, 'task', task, 'queue', queue, 'status', 'running', 'args', j[4],
    'kwargs', j[5], 'prio', j[6], 'attempts', '1', 'max', j[7], 'recov', '0',
    'created', NOW, 'run_at', NOW, 'started', NOW, 'worker', r.worker, 'lease', lease,
    'cancel', '0', 'token', r.token}
  if j[10] ~= '' then h[#h + 1] = 'timeout'; h[#h + 1] = j[10] end
  if j[11] ~= '' then h[#h + 1] = 'ttl'; h[#h + 1] = j[11] end
  if j[12] ~= '' then h[#h + 1] = 'hdr'; h[#h + 1] = j[12] end
  redis.call('HSET', jkey(id), unpack(h))
  redis.call('ZADD', P .. ':all', 0, id)
  redis.call('SADD', P .. ':queues', queue)
  redis.call('ZADD', P .. ':leases', lease, id)
  count(queue, false, 'running')
  emit('started', id, task, queue, 'running', '1')
end

-- apply.lua's write of a change to a running job (its compare-and-set is the caller's).
local function change(id, queue, c)
  local k = jkey(id)
  for field, value in pairs(c.set) do redis.call('HSET', k, field, value) end
  for _, field in ipairs(c.del) do redis.call('HDEL', k, field) end
  local g = redis.call('HMGET', k, 'status', 'prio', 'run_at', 'lease', 'key', 'ttl', 'task',
    'attempts', 'progress')
  local new = g[1]
  if new ~= 'running' then
    count(queue, 'running', new)
    redis.call('ZREM', P .. ':leases', id)
    redis.call('HDEL', k, 'token')
  end
  if new == 'queued' then ready(id, queue, g[2], g[3]) end
  if new == 'scheduled' then delay_until(id, tonumber(g[3])) end
  if new == 'running' then redis.call('ZADD', P .. ':leases', g[4], id) end
  if TERMINAL[new] then finalize(id, g[5], g[6]) end
  if c.done then redis.call('HSET', k, 'done_token', c.done) end
  if c.cancelpub then redis.call('PUBLISH', P .. ':cancel', id) end
  if c.event then emit(c.event, id, g[7], queue, new, g[8], g[9], c.message) end
end

local out = {}
for i, r in ipairs(items) do
  local id = r.job[1]
  local k = jkey(id)
  local fresh = redis.call('EXISTS', k) == 0
  if fresh then
    now = tonumber(r.at)
    NOW = fmt(now)
    create(r)
  end
  local c = r.change
  if c then
    local f = redis.call('HMGET', k, 'status', 'token', 'queue', 'cancel')
    local asked = c.event == 'cancel_requested' and f[4] == '1' -- asked by the first call
    if fresh or (f[1] == 'running' and f[2] == r.token and not asked) then
      now = tonumber(c.at)
      NOW = fmt(now)
      change(id, f[3], c)
    end
  end
  if redis.call('HGET', k, 'status') == 'running' then out[i] = record(id) else out[i] = 0 end
end
publish_wake()
return out
