-- Record how attempts ended, each only if its lease still holds. ARGV[4] replay flag,
-- then 6 arguments per attempt: id, token, status, result, error, delay.
-- Returns one record per attempt, or 0 where the lease was lost.
local replay = ARGV[4] == '1'
local out = {}
for i = 5, #ARGV, 6 do
  local id, token, status = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local result, err, delay = ARGV[i + 3], ARGV[i + 4], tonumber(ARGV[i + 5])
  local f = fields(id, 'status', 'token', 'queue', 'task', 'attempts', 'key', 'ttl', 'prio',
    'done_token', 'started', 'run_at')
  if f == nil or f[1] ~= 'running' or f[2] ~= token then
    if replay and f ~= nil and f[9] == token then out[#out + 1] = record(id) else out[#out + 1] = 0 end
  else
    local k = jkey(id)
    local queue, task, attempts = f[3], f[4], f[5]
    redis.call('HDEL', k, 'worker', 'lease', 'token')
    redis.call('HSET', k, 'cancel', '0', 'done_token', token)
    redis.call('ZREM', P .. ':leases', id)
    local kind = status
    if status == 'succeeded' then
      redis.call('HSET', k, 'status', status, 'result', result, 'finished', NOW)
    elseif status == 'failed' or status == 'cancelled' then
      redis.call('HSET', k, 'status', status, 'finished', NOW)
      if err ~= '' then redis.call('HSET', k, 'error', err) end
    elseif status == 'scheduled' then
      local at = now + delay
      redis.call('HSET', k, 'status', status, 'error', err, 'run_at', fmt(at))
      delay_until(id, at)
      kind = 'retrying'
    else -- queued: released; a started attempt is given back, and the job keeps its place
      if f[10] then attempts = tostring(math.max(tonumber(attempts) - 1, 0)) end
      redis.call('HSET', k, 'status', 'queued', 'attempts', attempts)
      ready(id, queue, f[8], f[11])
      kind = 'released'
    end
    count(queue, 'running', status)
    if TERMINAL[status] then finalize(id, f[6], f[7]) end
    emit(kind, id, task, queue, status, attempts)
    out[#out + 1] = record(id)
  end
end
publish_wake()
return out
