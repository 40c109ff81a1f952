-- Read one Durable Streams stream atomically: its metadata and the items from a position
-- (the item holding it, then up to ARGV[2] more), so the items always match the metadata.
--
-- KEYS[1]  the metadata hash; KEYS[2] the items sorted set
-- ARGV[1]  the start position; ARGV[2] how many items after the one holding it
local meta = redis.call('HMGET', KEYS[1], 'v', 'm')
if not meta[1] then
  return false
end
local first = redis.call('ZREVRANGEBYSCORE', KEYS[2], ARGV[1], '-inf', 'LIMIT', 0, 1)
local rest = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf', 'LIMIT', 0, tonumber(ARGV[2]))
return {meta[1], meta[2], first, rest}
