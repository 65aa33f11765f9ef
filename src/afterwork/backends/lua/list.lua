-- ARGV[4] before ("" for none), ARGV[5] limit, ARGV[6] queue, ARGV[7] task, then statuses.
-- Newest first: job ids sort by creation time.
local limit = tonumber(ARGV[5])
local queue, task = ARGV[6], ARGV[7]
local statuses = nil
for i = 8, #ARGV do
  statuses = statuses or {}
  statuses[ARGV[i]] = true
end
local max = '+'
if ARGV[4] ~= '' then max = '(' .. ARGV[4] end
local out = {}
local scanned = 0
while #out < limit and scanned < 20000 do
  local ids = redis.call('ZREVRANGEBYLEX', P .. ':all', max, '-', 'LIMIT', 0, 200)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    scanned = scanned + 1
    max = '(' .. id
    local f = fields(id, 'status', 'queue', 'task')
    if f ~= nil and not f[1] then
      redis.call('ZREM', P .. ':all', id) -- expired
    elseif f ~= nil and (statuses == nil or statuses[f[1]]) and (queue == '' or f[2] == queue)
        and (task == '' or f[3] == task) then
      out[#out + 1] = record(id)
      if #out >= limit then break end
    end
  end
end
return out
