-- ARGV[4] max recoveries, ARGV[5] batch size. Takes back jobs whose lease expired, as
-- afterwork._lifecycle.recover decides (the model-based test holds the two together).
local maxrec = tonumber(ARGV[4])
local expired = redis.call('ZRANGEBYSCORE', P .. ':leases', '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[5]))
local out = {}
for _, id in ipairs(expired) do
  redis.call('ZREM', P .. ':leases', id)
  local f = fields(id, 'status', 'lease', 'recov', 'max', 'worker', 'queue', 'task', 'attempts',
    'key', 'ttl', 'prio', 'started', 'cancel', 'run_at')
  if f == nil then
    quarantine(id, nil)
  elseif f[1] == 'running' and tonumber(f[2]) and tonumber(f[2]) <= now then
    local k = jkey(id)
    local queue, task, attempts = f[6], f[7], f[8]
    local worker = f[5] or '?'
    local started, cancel = f[12], f[13] == '1'
    redis.call('HDEL', k, 'worker', 'lease', 'token')
    redis.call('HSET', k, 'cancel', '0')
    local recov = tonumber(f[3]) or 0
    local message
    if started then
      recov = recov + 1
      message = 'the worker ' .. worker .. ' stopped renewing its lease during attempt ' .. attempts
    else
      message = 'worker ' .. worker .. ' died before starting it'
    end
    local function finished(status, err)
      redis.call('HSET', k, 'status', status, 'recov', recov, 'finished', NOW, 'error', err)
      count(queue, 'running', status)
      finalize(id, f[9], f[10])
    end
    if cancel then
      local why = started and message or 'before it started'
      local text = 'cancelled; its worker died ' .. why
      finished('cancelled', error_json('afterwork.Cancelled', text))
      emit('cancelled', id, task, queue, 'cancelled', attempts, nil, text)
    elseif not started then -- only claimed: back uncharged, keeping its place
      redis.call('HSET', k, 'status', 'queued')
      count(queue, 'running', 'queued')
      ready(id, queue, f[11], f[14])
      emit('recovered', id, task, queue, 'queued', attempts, nil, message)
    elseif (tonumber(f[4]) or 0) <= 0 then
      message = message .. '; it ran in-process only'
      finished('failed', error_json('afterwork.WorkerLost', message))
      emit('failed', id, task, queue, 'failed', attempts, nil, message)
    elseif recov >= maxrec then
      message = message .. '; failed: ' .. recov .. ' worker(s) died running this job'
        .. ' (max_recoveries=' .. maxrec .. ')'
      finished('failed', error_json('afterwork.WorkerLost', message))
      emit('failed', id, task, queue, 'failed', attempts, nil, message)
    else
      redis.call('HSET', k, 'status', 'queued', 'recov', recov, 'run_at', NOW,
        'error', error_json('afterwork.WorkerLost', message))
      count(queue, 'running', 'queued')
      ready(id, queue, f[11], NOW)
      emit('recovered', id, task, queue, 'queued', attempts, nil, message)
    end
    out[#out + 1] = record(id)
  end
end
publish_wake()
return out
