-- Append chunks, renew the lease, optionally end the stream; then announce.
-- KEYS[1] meta hash, KEYS[2] chunks list, KEYS[3] lease string
-- ARGV[1] producer token     ARGV[2] start index      ARGV[3] ttl ms
-- ARGV[4] finished ttl ms    ARGV[5] lease ms         ARGV[6] channel
-- ARGV[7] end status, '' for none                      ARGV[8] error text
-- ARGV[9] end message        ARGV[10] appended-message header (msgpack 0, start)
-- ARGV[11] 'SPUBLISH' on a Redis Cluster (the channel shares the keys' slot, and the
--          message stays on their shard), else 'PUBLISH'
-- ARGV[12..] the chunks, each msgpack-encoded
-- Returns {new length, 1 if a stop was requested else 0}, or an error starting with STALE.
local meta, list, lease = KEYS[1], KEYS[2], KEYS[3]
local fields = redis.call('HMGET', meta, 'status', 'producer', 'stop')
if fields[1] == 'deleted' then
  return redis.error_reply('STALE deleted: the stream was deleted')
end
if fields[1] ~= 'running' or fields[2] ~= ARGV[1] then
  return redis.error_reply('STALE not the producer of a running stream')
end
local length = redis.call('LLEN', list)
if length ~= tonumber(ARGV[2]) then
  return redis.error_reply('STALE write at ' .. ARGV[2] .. ' but ' .. length .. ' chunks are stored')
end
local publish = 'PUBLISH'
if ARGV[11] == 'SPUBLISH' then
  publish = 'SPUBLISH'
end
local n = #ARGV - 11
local ended = ARGV[7] ~= ''
local ttl = tonumber(ARGV[3])
if ended then
  ttl = tonumber(ARGV[4])
end
if n > 0 then
  redis.call('RPUSH', list, unpack(ARGV, 12))
  length = length + n
end
if length > 0 then
  redis.call('PEXPIRE', list, ttl)
end
if ended then
  -- DEL first: under maxmemory with nothing to evict, Redis refuses only a script's
  -- first write that may grow memory, so a full Redis still takes the end of a
  -- stream (a few bytes) once its chunks are in, or once they were refused.
  redis.call('DEL', lease)
  -- The final length too: snapshot.lua compares it with the list's, so an ended
  -- stream whose chunks were evicted never reads as a shorter, whole one.
  redis.call('HSET', meta, 'status', ARGV[7], 'error', ARGV[8], 'length', length)
elseif tonumber(ARGV[5]) > 0 then
  redis.call('SET', lease, ARGV[1], 'PX', tonumber(ARGV[5]))
else
  redis.call('DEL', lease)  -- a lease of 0: the producer releases the stream now
end
redis.call('PEXPIRE', meta, ttl)
-- Announce only after storing: a reader that sees a message finds its chunks.
if n > 0 then
  -- The header, then the chunks' msgpack values back to back: one msgpack stream.
  redis.call(publish, ARGV[6], ARGV[10] .. table.concat(ARGV, '', 12))
end
if ended then
  redis.call(publish, ARGV[6], ARGV[9])
end
return {length, fields[3] and 1 or 0}
