-- A job created already claimed (run in-process). ARGV[4] worker, ARGV[5] lease ttl,
-- ARGV[6] token, then the job's 12 arguments (its delay is ignored).
local id, task, queue = ARGV[7], ARGV[8], ARGV[9]
local lease = fmt(now + tonumber(ARGV[5]))
redis.call('HSET', jkey(id), 'id', id, 'task', task, 'queue', queue, 'status', 'running',
  'args', ARGV[10], 'kwargs', ARGV[11], 'prio', ARGV[12], 'attempts', '1', 'max', ARGV[13],
  'recov', '0', 'created', NOW, 'run_at', NOW, 'started', NOW, 'worker', ARGV[4],
  'lease', lease, 'cancel', '0', 'token', ARGV[6])
if ARGV[16] ~= '' then redis.call('HSET', jkey(id), 'timeout', ARGV[16]) end
if ARGV[17] ~= '' then redis.call('HSET', jkey(id), 'ttl', ARGV[17]) end
if ARGV[18] ~= '' then redis.call('HSET', jkey(id), 'hdr', ARGV[18]) end
redis.call('ZADD', P .. ':all', 0, id)
redis.call('SADD', P .. ':queues', queue)
redis.call('ZADD', P .. ':leases', lease, id)
count(queue, false, 'running')
emit('started', id, task, queue, 'running', '1')
return record(id)
