-- ARGV[4] batch size. The records (token included) of running jobs whose lease expired by
-- the server's clock, and that clock: afterwork._lifecycle.recover decides what becomes of
-- each, and apply.lua writes it if the lease is still the one read here.
local expired = redis.call('ZRANGEBYSCORE', P .. ':leases', '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, id in ipairs(expired) do
  local f = fields(id, 'status', 'lease')
  if f == nil then
    quarantine(id, nil)
  elseif f[1] == 'running' and tonumber(f[2]) and tonumber(f[2]) <= now then
    out[#out + 1] = record(id)
  else
    redis.call('ZREM', P .. ':leases', id) -- a stale entry
  end
end
return {NOW, out}
