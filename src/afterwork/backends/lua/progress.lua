-- ARGV[4] id, ARGV[5] token, ARGV[6] progress, ARGV[7] message ("" for none), ARGV[8] has message.
local id = ARGV[4]
local f = fields(id, 'status', 'token', 'task', 'queue', 'attempts')
if f == nil or f[1] ~= 'running' or f[2] ~= ARGV[5] then return 0 end
redis.call('HSET', jkey(id), 'progress', ARGV[6])
if ARGV[8] == '1' then
  redis.call('HSET', jkey(id), 'pmsg', ARGV[7])
else
  redis.call('HDEL', jkey(id), 'pmsg')
end
emit('progress', id, f[3], f[4], 'running', f[5], ARGV[6], ARGV[7])
return 1
