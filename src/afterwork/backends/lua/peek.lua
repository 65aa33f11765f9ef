-- ARGV[4] number of queues (0: all), then the queues. Returns 0 if a job is due now, the
-- seconds until the next delayed job, or -1 if nothing waits.
local nq = tonumber(ARGV[4])
local queues = {}
for i = 1, nq do queues[i] = ARGV[4 + i] end
if nq == 0 then queues = redis.call('SMEMBERS', P .. ':queues') end
for _, queue in ipairs(queues) do
  if redis.call('ZCARD', P .. ':q:' .. queue) > 0
    and redis.call('SISMEMBER', P .. ':paused', queue) == 0 then
    return '0'
  end
end
local first = redis.call('ZRANGE', P .. ':delayed', 0, 0, 'WITHSCORES')
if #first == 0 then return '-1' end
return fmt(math.max(tonumber(first[2]) - now, 0))
