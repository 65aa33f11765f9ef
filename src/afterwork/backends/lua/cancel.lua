-- ARGV[4] job id. Cancels a waiting job at once; flags a running one and tells its worker.
local id = ARGV[4]
local f = fields(id, 'status', 'queue', 'task', 'attempts', 'key', 'ttl')
if f == nil then
  quarantine(id, nil)
  return record(id)
end
local status, queue = f[1], f[2]
if not status or TERMINAL[status] then
  if not status then return false end
  return record(id)
end
if status == 'running' then
  if redis.call('HGET', jkey(id), 'cancel') == '1' then return record(id) end -- asked already
  redis.call('HSET', jkey(id), 'cancel', '1')
  emit('cancel_requested', id, f[3], queue, 'running', f[4])
  redis.call('PUBLISH', P .. ':cancel', id)
  return record(id)
end
redis.call('ZREM', P .. ':q:' .. queue, id)
redis.call('ZREM', P .. ':delayed', id)
redis.call('HSET', jkey(id), 'status', 'cancelled', 'finished', NOW)
count(queue, status, 'cancelled')
finalize(id, f[5], f[6])
emit('cancelled', id, f[3], queue, 'cancelled', f[4])
return record(id)
