-- ARGV[4] job id. Queues a failed or cancelled job again with a fresh attempt budget.
local id = ARGV[4]
local f = fields(id, 'status', 'queue', 'task', 'key', 'prio')
if f == nil or not f[1] then return false end
if f[1] ~= 'failed' and f[1] ~= 'cancelled' or f[2] == '?' then return record(id) end
local k = jkey(id)
local key = f[4]
if key then
  local holder = redis.call('GET', P .. ':key:' .. key)
  if holder and holder ~= id and redis.call('EXISTS', jkey(holder)) == 1 then
    redis.call('HDEL', k, 'key') -- another unfinished job holds the key now
  else
    redis.call('SET', P .. ':key:' .. key, id)
  end
end
redis.call('PERSIST', k)
redis.call('ZREM', P .. ':done', id)
redis.call('ZREM', P .. ':expires', id)
redis.call('HDEL', k, 'started', 'finished', 'result', 'progress', 'pmsg', 'done_token')
redis.call('HSET', k, 'status', 'queued', 'attempts', '0', 'recov', '0', 'run_at', NOW)
count(f[2], f[1], 'queued')
ready(id, f[2], f[5], NOW)
emit('retried', id, f[3], f[2], 'queued', '0')
publish_wake()
return record(id)
