-- Append chunks to one or more streams, renew their leases, end those that end; then
-- announce. A write of no chunks and no end only renews the lease.
-- Stream i: KEYS[3i-2] meta hash, KEYS[3i-1] chunks list, KEYS[3i] lease string.
-- ARGV[1] 'SPUBLISH' on a Redis Cluster (the channel shares the keys' slot, and the
--         message stays on their shard), else 'PUBLISH'
-- Then, stream after stream, 11 values and the stream's chunks:
--   token, ttl ms, finished ttl ms, lease ms, channel,
--   start index, end status ('' for none), error text, end message,
--   appended-message header (msgpack 0, start), n, then n chunks (each msgpack-encoded)
-- Returns one value per stream: 1 if a stop was requested, 0 if not; -1 not the producer
-- of a running stream, -2 the start is not the stored length, -3 the stream was deleted
-- (its tombstone, see delete.lua); or, as text, the error Redis answered one of the
-- stream's commands (OOM under maxmemory, WRONGTYPE). A refusal is that stream's alone.
--
-- Under maxmemory with nothing to evict, Redis refuses a script's commands that may grow
-- memory only until the script has written something. So the caller puts the writes
-- that carry chunks first, and a stream's first command that writes is its RPUSH: a
-- full Redis refuses chunks, never a renewal or an end (a few bytes, after PEXPIRE).
local publish = ARGV[1] == 'SPUBLISH' and 'SPUBLISH' or 'PUBLISH'

local function write(meta, list, lease, a)
  local token = ARGV[a]
  local fields = redis.call('HMGET', meta, 'status', 'producer', 'stop')
  if fields[1] == 'deleted' then
    return -3
  end
  if fields[1] ~= 'running' or fields[2] ~= token then
    return -1
  end
  local length = redis.call('LLEN', list)
  if length ~= tonumber(ARGV[a + 5]) then
    return -2
  end
  local n = tonumber(ARGV[a + 10])
  local ended = ARGV[a + 6] ~= ''
  local ttl = tonumber(ARGV[a + 1])
  if ended then
    ttl = tonumber(ARGV[a + 2])
  end
  if n > 0 then
    redis.call('RPUSH', list, unpack(ARGV, a + 11, a + 10 + n))
    length = length + n
  end
  if length > 0 then
    redis.call('PEXPIRE', list, ttl)
  end
  redis.call('PEXPIRE', meta, ttl)
  if ended then
    -- The final length too: snapshot.lua compares it with the list's, so an ended
    -- stream whose chunks were evicted never reads as a shorter, whole one.
    redis.call('DEL', lease)
    redis.call('HSET', meta, 'status', ARGV[a + 6], 'error', ARGV[a + 7], 'length', length)
  elseif tonumber(ARGV[a + 3]) > 0 then
    redis.call('SET', lease, token, 'PX', tonumber(ARGV[a + 3]))
  else
    redis.call('DEL', lease) -- a lease of 0: the producer releases the stream now
  end
  -- Announce only after storing: a reader that sees a message finds its chunks.
  if n > 0 then
    -- The header, then the chunks' msgpack values back to back: one msgpack stream.
    redis.call(publish, ARGV[a + 4], ARGV[a + 9] .. table.concat(ARGV, '', a + 11, a + 10 + n))
  end
  if ended then
    redis.call(publish, ARGV[a + 4], ARGV[a + 8])
  end
  return fields[3] and 1 or 0
end

local out = {}
local a = 2
for i = 1, #KEYS / 3 do
  local ok, result = pcall(write, KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i], a)
  if ok then
    out[i] = result
  elseif type(result) == 'table' and result.err then
    out[i] = result.err
  else
    out[i] = tostring(result)
  end
  a = a + 11 + tonumber(ARGV[a + 10])
end
return out
