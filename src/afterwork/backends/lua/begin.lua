-- ARGV[4...] (job id, token) pairs. Starts claimed attempts (afterwork._lifecycle.begin):
-- fenced by the token; a second begin under one lease changes nothing. Returns one record
-- per lease, or 0 where the lease is no longer the caller's.
local out = {}
for i = 4, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local f = fields(id, 'status', 'token', 'started', 'task', 'queue')
  if f == nil or f[1] ~= 'running' or f[2] ~= token then
    out[#out + 1] = 0
  else
    if not f[3] then
      local attempts = redis.call('HINCRBY', jkey(id), 'attempts', 1)
      redis.call('HSET', jkey(id), 'started', NOW)
      emit('started', id, f[4], f[5], 'running', tostring(attempts))
    end
    out[#out + 1] = record(id)
  end
end
return out
