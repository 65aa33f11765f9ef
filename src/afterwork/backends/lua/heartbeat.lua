-- ARGV[4] lease ttl, then (job id, token) pairs. Returns {lost ids, cancel ids}.
local lease = fmt(now + tonumber(ARGV[4]))
local lost, cancel = {}, {}
for i = 5, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local f = fields(id, 'status', 'token', 'cancel')
  if f == nil or f[1] ~= 'running' or f[2] ~= token then
    lost[#lost + 1] = id
  else
    redis.call('HSET', jkey(id), 'lease', lease)
    redis.call('ZADD', P .. ':leases', lease, id)
    if f[3] == '1' then cancel[#cancel + 1] = id end
  end
end
return {lost, cancel}
