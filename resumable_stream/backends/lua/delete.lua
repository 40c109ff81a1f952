-- Delete a stream: remove its keys, leave a tombstone, announce the end.
-- KEYS[1] meta hash, KEYS[2] chunks list, KEYS[3] lease string
-- ARGV[1] tombstone ttl ms, ARGV[2] channel, ARGV[3] end message (failed, length 0,
-- StreamDeleted's error text), ARGV[4] 'SPUBLISH' on a Redis Cluster, else 'PUBLISH'
-- Returns 1 if a stream was there, else 0.
-- The tombstone is the meta hash itself, reduced to status 'deleted' with a short
-- expiry: write.lua and renew.lua refuse the producer with 'STALE deleted' (it stops,
-- and does not take the vanished record for lost storage to be marked failed again),
-- claim.lua answers 'failed', snapshot.lua nothing. No new key: every key still
-- shares the stream's slot, and none is left without an expiry.
local status = redis.call('HGET', KEYS[1], 'status')
-- The list and lease go whatever is left of the record (a list whose meta was evicted).
redis.call('DEL', KEYS[2], KEYS[3])
if not status or status == 'deleted' then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'status', 'deleted')
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
local publish = 'PUBLISH'
if ARGV[4] == 'SPUBLISH' then
  publish = 'SPUBLISH'
end
redis.call(publish, ARGV[2], ARGV[3])
return 1
