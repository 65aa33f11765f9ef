-- Shared prelude of every afterwork script. ARGV[1] = key prefix, ARGV[2] = now (seconds
-- since the epoch, or "" for the server's TIME), ARGV[3] = events stream MAXLEN.
-- Keys are built from the prefix. KEYS[1] (the events stream) only routes the call: on a
-- Redis Cluster the prefix is a hash tag ('{name}'), so every key is in KEYS[1]'s slot.
local P = ARGV[1]
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x) return string.format('%.6f', x) end
-- Rounded to the microsecond once: a double holds such a time within far less than half a
-- microsecond, so formatting the rounded value again gives the same text.
local NOW = fmt(now)
now = tonumber(NOW)
local MAXLEN = ARGV[3]
local FIELDS -- the fields record() reads, built on its first call (most enqueues make none)
local TERMINAL = {succeeded = true, failed = true, cancelled = true}
local wake = false

local function jkey(id) return P .. ':job:' .. id end

local function record(id)
  if not FIELDS then
    FIELDS = {'id', 'task', 'queue', 'status', 'args', 'kwargs', 'prio', 'attempts', 'max',
      'recov', 'key', 'created', 'run_at', 'started', 'finished', 'result', 'error',
      'progress', 'pmsg', 'timeout', 'ttl', 'worker', 'lease', 'cancel', 'token', 'tl', 'hdr'}
  end
  return redis.call('HMGET', jkey(id), unpack(FIELDS))
end

-- HMGET that never raises: a key of the wrong type (a malformed record) gives nil.
local function fields(id, ...)
  local ok, res = pcall(redis.call, 'HMGET', jkey(id), ...)
  if type(res) == 'table' and res.err == nil then return res end
  return nil
end

-- Each event carries a sequence number ('n'): consecutive, so a reader sees a gap (events
-- trimmed before it read them) that the stream's own ids cannot show.
local function emit(kind, id, task, queue, status, attempts, progress, message)
  local n = redis.call('INCR', P .. ':evseq')
  redis.call('XADD', P .. ':events', 'MAXLEN', '~', MAXLEN, '*', 'n', n, 'k', kind, 'j', id,
    't', task or '', 'q', queue or '', 's', status, 'a', attempts or '0', 'at', NOW,
    'p', progress or '', 'm', message or '')
end

local function count(queue, from, to)
  local h = P .. ':stats:' .. queue
  if from then redis.call('HINCRBY', h, from, -1) end
  if to then redis.call('HINCRBY', h, to, 1) end
end

-- Ready queues are sorted sets in the model's order (afterwork._lifecycle.ready_order):
-- higher priority first, then earlier due time (ms), then the smaller id (equal scores sort
-- by member). Priorities are within +-1000, so the score stays an exact double.
local function ready(id, queue, prio, run_at)
  local p = tonumber(prio) or 0
  if p > 1000 then p = 1000 elseif p < -1000 then p = -1000 end
  local ms = math.floor((tonumber(run_at) or now) * 1000)
  redis.call('ZADD', P .. ':q:' .. queue, string.format('%.17g', -p * 4398046511104 + ms), id)
  wake = true
end

local function delay_until(id, at)
  redis.call('ZADD', P .. ':delayed', fmt(at), id)
end

-- Bookkeeping for a job that reached a final state.
local function finalize(id, key, ttl)
  if key and key ~= '' and redis.call('GET', P .. ':key:' .. key) == id then
    redis.call('DEL', P .. ':key:' .. key)
  end
  redis.call('ZADD', P .. ':done', NOW, id)
  local t = tonumber(ttl)
  if t then
    redis.call('ZADD', P .. ':expires', fmt(now + t), id)
    -- A safety net in case no reaper runs: purge() normally deletes the job first.
    redis.call('EXPIRE', jkey(id), math.floor(t) + 3600)
  end
end

local function error_json(type_, message)
  return cjson.encode({type = type_, message = message, traceback = ''})
end

-- A record that cannot be read as a job: keep its raw value aside, leave a failed job.
local function quarantine(id, queue_key)
  if queue_key then redis.call('ZREM', queue_key, id) end
  redis.call('ZREM', P .. ':delayed', id)
  redis.call('ZREM', P .. ':leases', id)
  if redis.call('EXISTS', jkey(id)) == 1 then
    redis.call('RENAME', jkey(id), P .. ':bad:' .. id)
  end
  redis.call('HSET', jkey(id), 'id', id, 'task', '?', 'queue', '?', 'status', 'failed',
    'args', '[]', 'kwargs', '{}', 'prio', '0', 'attempts', '0', 'max', '1', 'recov', '0',
    'created', NOW, 'run_at', NOW, 'finished', NOW,
    'error', error_json('afterwork.MalformedRecord',
      'the stored record is not a job afterwork can read; its raw value is kept under '
      .. P .. ':bad:' .. id))
  redis.call('ZADD', P .. ':all', 0, id)
  redis.call('ZADD', P .. ':done', NOW, id)
  emit('failed', id, '?', '?', 'failed', '0')
end

-- Create one job from 12 arguments starting at ARGV[i] (the last: its headers, JSON or ''). Returns false if created, or the
-- record of the job that already holds the key (or the id).
-- With `debounce` (afterwork._lifecycle.debounce), a waiting job holding the key takes the
-- new arguments and is pushed back to `delay` from now (its record is returned); a running
-- holder gives up its key, and the new job is created and takes it.
local function create(i, debounce)
  local id, task, queue, args, kwargs = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local prio, max, key, delay = ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], tonumber(ARGV[i + 8])
  local timeout, ttl, headers = ARGV[i + 9], ARGV[i + 10], ARGV[i + 11]
  if key ~= '' then
    local holder = redis.call('GET', P .. ':key:' .. key)
    if holder and redis.call('EXISTS', jkey(holder)) == 1 then
      local f = debounce and fields(holder, 'status', 'queue', 'task', 'attempts')
      if not f then return record(holder) end
      if f[1] == 'scheduled' or f[1] == 'queued' then
        local at = tonumber(fmt(now + delay))
        redis.call('HSET', jkey(holder), 'status', 'scheduled', 'args', args, 'kwargs', kwargs,
          'run_at', fmt(at))
        if f[1] == 'queued' then
          redis.call('ZREM', P .. ':q:' .. f[2], holder)
          count(f[2], 'queued', 'scheduled')
        end
        delay_until(holder, at)
        emit('debounced', holder, f[3], f[2], 'scheduled', f[4])
        return record(holder)
      elseif f[1] == 'running' then
        redis.call('HDEL', jkey(holder), 'key') -- the new job below takes the key
      else
        return record(holder)
      end
    end
  end
  local status, run_at, at = 'queued', now, NOW
  if delay > 0 then
    status = 'scheduled'
    at = fmt(now + delay)
    run_at = tonumber(at)
  end
  -- The listing index doubles as the "already created" check: an id already in it is a
  -- job this call repeats (its reply lost), unless its record is gone (expired), in which
  -- case the job is created again, as before. One command for a new id, not two.
  local all = P .. ':all'
  if redis.call('ZADD', all, 'NX', '0', id) == 0 and redis.call('EXISTS', jkey(id)) == 1 then
    return record(id)
  end
  -- One HSET with the optional fields too (one command per job, not up to five).
  local h = {'id', id, 'task', task, 'queue', queue, 'status', status, 'args', args,
    'kwargs', kwargs, 'prio', prio, 'attempts', '0', 'max', max, 'recov', '0',
    'created', NOW, 'run_at', at, 'cancel', '0'}
  if key ~= '' then h[#h + 1] = 'key'; h[#h + 1] = key end
  if timeout ~= '' then h[#h + 1] = 'timeout'; h[#h + 1] = timeout end
  if ttl ~= '' then h[#h + 1] = 'ttl'; h[#h + 1] = ttl end
  if headers ~= '' then h[#h + 1] = 'hdr'; h[#h + 1] = headers end
  local res = redis.pcall('HSET', jkey(id), unpack(h))
  if type(res) == 'table' and res.err then
    -- The record could not be written (a key of another type in its place): undo the
    -- index entry and fail with the write's own error, leaving nothing behind.
    redis.call('ZREM', all, id)
    error(res)
  end
  if key ~= '' then redis.call('SET', P .. ':key:' .. key, id) end
  -- The queue set is written only when this job's status count of its queue goes from 0
  -- to 1: a count above 0 was raised by a job of that queue, whose creation (here, or in
  -- start.lua / local.lua, which always write it) put the queue in the set, and the set
  -- never loses a name. One command less for all but a queue's first waiting job.
  if redis.call('HINCRBY', P .. ':stats:' .. queue, status, '1') == 1 then
    redis.call('SADD', P .. ':queues', queue)
  end
  if status == 'queued' then ready(id, queue, prio, run_at) else delay_until(id, run_at) end
  emit('enqueued', id, task, queue, status, '0')
  return false
end

local function publish_wake()
  if wake then redis.call('PUBLISH', P .. ':wake', '1') end
end

-- When the next delayed job falls due (its run_at), or '' if none waits.
local function next_due()
  local first = redis.call('ZRANGE', P .. ':delayed', 0, 0, 'WITHSCORES')
  if #first == 0 then return '' end
  return first[2]
end

-- A claim that begins (claim.lua, claim_flow.lua: a worker's `claim(begin=n)`, the jobs it
-- starts at once). `claimed` lists this claim's jobs in claim order as {id, queue, recov};
-- the first `n` begin, unless one of them must run alone (a job recovered from a dead
-- worker: the worker admits it alone, and begins it itself). Returns how many begin.
local function begins(claimed, n)
  if n > #claimed then n = #claimed end
  for i = 1, n do
    if (tonumber(claimed[i][3]) or 0) > 0 then return 0 end
  end
  return n
end

-- afterwork._lifecycle.begin on a job just claimed, written as apply.lua writes the change
-- it computes (a begin item): the attempt counted, its start stamped now, its 'started'
-- event; a rate-limited job's start joins its group's log (its `rgrp` stays, so a release
-- before the worker runs it can take that start back: apply.lua's `unstart`).
local function begin_claimed(id, queue)
  local k = jkey(id)
  local f = redis.call('HMGET', k, 'attempts', 'task', 'progress', 'rgrp', 'rper')
  local attempts = tostring((tonumber(f[1]) or 0) + 1)
  redis.call('HSET', k, 'attempts', attempts, 'started', NOW)
  if f[4] then
    redis.call('SREM', P .. ':rpend:' .. f[4], id)
    local zkey = P .. ':starts:' .. f[4]
    redis.call('ZADD', zkey, NOW, id .. ':' .. attempts) -- one per attempt
    redis.call('PEXPIRE', zkey, math.ceil(tonumber(f[5]) * 1000) + 1000)
  end
  emit('started', id, f[2], queue, 'running', attempts, f[3])
end
