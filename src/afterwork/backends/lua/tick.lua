-- ARGV[4] = schedule, ARGV[5] = tick, then the job's 12 arguments.
local mark = P .. ':tick:' .. ARGV[4] .. ':' .. ARGV[5]
if not redis.call('SET', mark, '1', 'NX', 'EX', 172800) then return false end
local last = tonumber(redis.call('HGET', P .. ':ticks', ARGV[4]))
if not last or tonumber(ARGV[5]) > last then redis.call('HSET', P .. ':ticks', ARGV[4], ARGV[5]) end
local existing = create(6)
publish_wake()
return {NOW, existing or 0}
