-- Named leases (afterwork.backends.base.Leases). ARGV[4] = op ('acquire', 'renew',
-- 'release', 'list'), ARGV[5] = name, ARGV[6] = token, ARGV[7] = ttl (seconds),
-- ARGV[8] = holder. A lease is the hash P:nlease:<name> {token, holder, acquired, expires};
-- P:nleases is the set of names (pruned by 'list'). Held while now < expires.
local op = ARGV[4]
local names = P .. ':nleases'

local function held(name)
  local k = P .. ':nlease:' .. name
  local f = redis.call('HMGET', k, 'token', 'holder', 'acquired', 'expires')
  if not f[1] then return nil end
  if tonumber(f[4]) <= now then
    redis.call('DEL', k)
    redis.call('SREM', names, name)
    return nil
  end
  return f
end

if op == 'list' then
  local out = {}
  for _, name in ipairs(redis.call('SMEMBERS', names)) do
    local f = held(name)
    if f then table.insert(out, {name, f[2], f[3], f[4]}) end
  end
  return out
end

local name = ARGV[5]
local k = P .. ':nlease:' .. name
if op == 'acquire' then
  local f = held(name)
  if f then return f[1] == ARGV[6] and 1 or 0 end  -- a retry whose first reply was lost
  redis.call('HSET', k, 'token', ARGV[6], 'holder', ARGV[8], 'acquired', NOW,
    'expires', fmt(now + tonumber(ARGV[7])))
  redis.call('SADD', names, name)
  return 1
elseif op == 'renew' then
  local f = held(name)
  if not f or f[1] ~= ARGV[6] then return 0 end
  redis.call('HSET', k, 'expires', fmt(now + tonumber(ARGV[7])))
  return 1
elseif op == 'release' then
  if redis.call('HGET', k, 'token') ~= ARGV[6] then return 0 end
  redis.call('DEL', k)
  redis.call('SREM', names, name)
  return 1
end
return redis.error_reply('unknown lease op ' .. tostring(op))
