-- ARGV[4] = number of jobs, then 12 arguments per job: the 11 of create(), then "1" for a
-- debounced enqueue (or "").
local n = tonumber(ARGV[4])
local out = {NOW}
for j = 0, n - 1 do
  local existing = create(5 + j * 12, ARGV[5 + j * 12 + 11] == '1')
  out[#out + 1] = existing or 0
end
publish_wake()
return out
