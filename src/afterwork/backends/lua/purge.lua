-- ARGV[4] older than (seconds, or ""), ARGV[5] batch size. Deletes finished jobs.
local batch = tonumber(ARGV[5])
local doomed = redis.call('ZRANGEBYSCORE', P .. ':expires', '-inf', NOW, 'LIMIT', 0, batch)
local older = tonumber(ARGV[4])
if older then
  local more = redis.call('ZRANGEBYSCORE', P .. ':done', '-inf', fmt(now - older), 'LIMIT', 0, batch)
  for _, id in ipairs(more) do doomed[#doomed + 1] = id end
end
local deleted = 0
local seen = {}
for _, id in ipairs(doomed) do
  if not seen[id] then
    seen[id] = true
    local f = fields(id, 'status', 'queue')
    if f ~= nil and f[1] and TERMINAL[f[1]] then
      count(f[2], f[1], false)
      deleted = deleted + redis.call('DEL', jkey(id))
      emit('purged', id, '', f[2], f[1], '0')
    end
    if f == nil or not f[1] or TERMINAL[f[1]] then
      redis.call('ZREM', P .. ':done', id)
      redis.call('ZREM', P .. ':expires', id)
      redis.call('ZREM', P .. ':all', id)
    end
  end
end
return {deleted, #doomed}
