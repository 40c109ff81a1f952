-- Claim a stream id for a producer, atomically.
-- KEYS[1] meta hash, KEYS[2] chunks list, KEYS[3] lease string
-- ARGV[1] producer token, ARGV[2] ttl in ms, ARGV[3] lease in ms, ARGV[4] metadata
-- Returns nil if the caller is now the producer, else the stored status as stored (a
-- running stream whose lease lapsed is still 'running': the core judges leases), or
-- 'failed' for a deleted stream's tombstone (see delete.lua): the id reads as finished
-- until it expires, so that its old producer cannot make it again.
-- The caller is the producer if:
-- * no record exists;
-- * the record is running under ARGV[1] already: this very claim, retried because its
--   reply was lost (its lease and expiries are renewed, nothing else changes);
-- * the record is running, stored nothing and its lease lapsed: an orphaned claim (its
--   caller went away, or released it). It is taken over as a fresh stream. Nothing was
--   stored, so no reader holds any part of it; left in place it would answer
--   "finished" for the whole TTL. A failed record is never taken over: a "storage
--   lost" marker must keep its id from being produced a second time.
local ttl, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
local fields = redis.call('HMGET', KEYS[1], 'status', 'producer', 'length')
local status = fields[1]
if status == 'deleted' then
  return 'failed'
end
if status then
  local length = redis.call('LLEN', KEYS[2])
  if status == 'running' and fields[2] == ARGV[1] then
    redis.call('SET', KEYS[3], ARGV[1], 'PX', lease)
    redis.call('PEXPIRE', KEYS[1], ttl)
    if length > 0 then
      redis.call('PEXPIRE', KEYS[2], ttl)
    end
    return false
  end
  local orphaned = status == 'running' and length == 0
    and redis.call('EXISTS', KEYS[3]) == 0
  if not orphaned then
    return status
  end
end
-- HSET is the first write: under maxmemory with nothing to evict, Redis refuses a
-- script's first write that may grow memory (OOM) but lets any later one through, so
-- a full Redis refuses the claim here instead of accepting a stream it cannot store
-- (and a record it would have taken over stays as it was).
redis.call('HSET', KEYS[1], 'status', 'running', 'producer', ARGV[1], 'info', ARGV[4])
-- A taken-over record's end, error and stop flag are not the new stream's.
redis.call('HDEL', KEYS[1], 'error', 'length', 'stop')
-- A list left behind (its meta evicted under memory pressure) must not leak into
-- the new stream.
redis.call('DEL', KEYS[2])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('SET', KEYS[3], ARGV[1], 'PX', lease)
return false
