-- Claim a stream id for a producer, atomically.
-- KEYS[1] meta hash, KEYS[2] chunks list, KEYS[3] lease string
-- ARGV[1] producer token, ARGV[2] ttl in ms, ARGV[3] lease in ms, ARGV[4] metadata
-- Returns the existing status, or nil if this call created the stream. A running
-- stream whose lease lapsed (its producer died) counts as failed: it is never
-- taken over, since readers may already hold part of what the dead producer wrote.
local status = redis.call('HGET', KEYS[1], 'status')
if status then
  if status == 'running' and redis.call('EXISTS', KEYS[3]) == 0 then
    return 'failed'
  end
  return status
end
-- HSET is the first write: under maxmemory with nothing to evict, Redis refuses a
-- script's first write that may grow memory (OOM) but lets any later one through, so
-- a full Redis refuses the claim here instead of accepting a stream it cannot store.
redis.call('HSET', KEYS[1], 'status', 'running', 'producer', ARGV[1], 'info', ARGV[4])
-- A list left behind (its meta evicted under memory pressure) must not leak into
-- the new stream.
redis.call('DEL', KEYS[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
redis.call('SET', KEYS[3], ARGV[1], 'PX', tonumber(ARGV[3]))
return false
