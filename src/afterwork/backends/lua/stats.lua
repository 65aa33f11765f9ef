-- Per-queue counts: {queue, {status, count, ...}, oldest due run_at or ""}.
local out = {}
for _, queue in ipairs(redis.call('SMEMBERS', P .. ':queues')) do
  local oldest = ''
  local first = redis.call('ZRANGE', P .. ':q:' .. queue, 0, 0)
  if #first > 0 then oldest = redis.call('HGET', jkey(first[1]), 'run_at') or '' end
  out[#out + 1] = {queue, redis.call('HGETALL', P .. ':stats:' .. queue), oldest}
end
return out
