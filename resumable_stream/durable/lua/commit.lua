-- Compare-and-set one Durable Streams stream: store its metadata, add its new items,
-- set its expiry, then announce the change. Nothing changes unless the stored version
-- is the one the caller decided on, so a writer that lost a race retries on fresh state.
--
-- KEYS[1]  the metadata hash (fields v: version, id: stream id, m: metadata JSON)
-- KEYS[2]  the items sorted set (score: start position, member: "start:batch_end:data")
-- ARGV[1]  expected version (0: no stream there)
-- ARGV[2]  the new metadata JSON ('' removes the stream)
-- ARGV[3]  the stream id (of the stream replaced or removed: checked, as a stream
--          re-created under the same path starts its versions again)
-- ARGV[4]  expiry, ms since the epoch (every key carries one)
-- ARGV[5]  channel to announce on; ARGV[6] the message (the stream's path)
-- ARGV[7]  the first position retained: items that end before the one holding it go
-- ARGV[8..] score, member pairs of the new items
local current = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if current ~= tonumber(ARGV[1]) then
  return 0
end
if current > 0 and redis.call('HGET', KEYS[1], 'id') ~= ARGV[3] then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1], KEYS[2])
else
  if current == 0 then
    -- Leftovers of a stream that expired or was deleted under this path.
    redis.call('DEL', KEYS[2])
  end
  redis.call('HSET', KEYS[1], 'v', current + 1, 'id', ARGV[3], 'm', ARGV[2])
  -- ZADD in slices: unpack() fails above about 8,000 values.
  local batch = {}
  for i = 8, #ARGV, 2 do
    batch[#batch + 1] = ARGV[i]
    batch[#batch + 1] = ARGV[i + 1]
    if #batch >= 2000 then
      redis.call('ZADD', KEYS[2], unpack(batch))
      batch = {}
    end
  end
  if #batch > 0 then
    redis.call('ZADD', KEYS[2], unpack(batch))
  end
  if tonumber(ARGV[7]) > 0 then
    -- Retention: keep the item holding the first retained position, drop those before.
    local holder = redis.call('ZREVRANGEBYSCORE', KEYS[2], ARGV[7], '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if holder[2] then
      redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. holder[2])
    end
  end
  redis.call('PEXPIREAT', KEYS[1], tonumber(ARGV[4]))
  redis.call('PEXPIREAT', KEYS[2], tonumber(ARGV[4]))
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
