-- Renew a stream's sliding TTL after a read, if the stream is still the one read (a
-- stream re-created under the same path in between keeps its own expiry).
--
-- KEYS[1]  the metadata hash; KEYS[2] the items sorted set
-- ARGV[1]  the stream id; ARGV[2] the TTL in ms
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]))
return 1
