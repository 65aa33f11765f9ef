-- ARGV[4] = number of jobs, then 13 arguments per job: the 12 of create(), then "1" for a
-- debounced enqueue (or "").
local n = tonumber(ARGV[4])
local out = {NOW}
for j = 0, n - 1 do
  local existing = create(5 + j * 13, ARGV[5 + j * 13 + 12] == '1')
  out[#out + 1] = existing or 0
end
publish_wake()
return out
