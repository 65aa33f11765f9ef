-- How many jobs are due or running, at one instant: queued and running (the per-queue
-- counters) plus the scheduled ones whose time has come (the delayed set, by run_at).
local total = redis.call('ZCOUNT', P .. ':delayed', '-inf', NOW)
for _, queue in ipairs(redis.call('SMEMBERS', P .. ':queues')) do
  local h = P .. ':stats:' .. queue
  for _, status in ipairs({'queued', 'running'}) do
    local n = tonumber(redis.call('HGET', h, status) or '0') or 0
    if n > 0 then total = total + n end
  end
end
return total
