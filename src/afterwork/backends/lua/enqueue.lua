-- ARGV[4] = number of jobs, then 11 arguments per job (see create()).
local n = tonumber(ARGV[4])
local out = {NOW}
for j = 0, n - 1 do
  local existing = create(5 + j * 11)
  out[#out + 1] = existing or 0
end
publish_wake()
return out
