-- ARGV[4] max recoveries, ARGV[5] batch size. Takes back jobs whose lease expired.
local maxrec = tonumber(ARGV[4])
local expired = redis.call('ZRANGEBYSCORE', P .. ':leases', '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[5]))
local out = {}
for _, id in ipairs(expired) do
  redis.call('ZREM', P .. ':leases', id)
  local f = fields(id, 'status', 'lease', 'recov', 'max', 'worker', 'queue', 'task', 'attempts',
    'key', 'ttl', 'prio')
  if f == nil then
    quarantine(id, nil)
  elseif f[1] == 'running' and tonumber(f[2]) and tonumber(f[2]) <= now then
    local k = jkey(id)
    local recov = (tonumber(f[3]) or 0) + 1
    local message = 'the worker ' .. (f[5] or '?') .. ' stopped renewing its lease'
    local queue = f[6]
    redis.call('HDEL', k, 'worker', 'lease', 'token')
    if recov > maxrec or (tonumber(f[4]) or 0) <= 0 then
      message = message .. '; given up after ' .. recov .. ' recoveries'
      redis.call('HSET', k, 'status', 'failed', 'recov', recov, 'finished', NOW,
        'error', error_json('afterwork.WorkerLost', message))
      count(queue, 'running', 'failed')
      finalize(id, f[9], f[10])
      emit('failed', id, f[7], queue, 'failed', f[8])
    else
      redis.call('HSET', k, 'status', 'queued', 'recov', recov, 'run_at', NOW,
        'error', error_json('afterwork.WorkerLost', message))
      count(queue, 'running', 'queued')
      ready(id, queue, f[11])
      emit('recovered', id, f[7], queue, 'queued', f[8])
    end
    out[#out + 1] = record(id)
  end
end
publish_wake()
return out
