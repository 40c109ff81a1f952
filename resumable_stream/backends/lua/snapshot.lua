-- Read a stream's state and a range of its chunks in one atomic step.
-- KEYS[1] meta hash, KEYS[2] chunks list, KEYS[3] lease string
-- ARGV[1] start index, ARGV[2] at most this many chunks
-- Returns nil if there is no such stream, else
-- {status, error, length, lease_alive, chunks, metadata}.
local fields = redis.call('HMGET', KEYS[1], 'status', 'error', 'info')
if not fields[1] then
  return false
end
local length = redis.call('LLEN', KEYS[2])
local start = tonumber(ARGV[1])
local chunks = {}
if start < length and tonumber(ARGV[2]) > 0 then
  chunks = redis.call('LRANGE', KEYS[2], start, start + tonumber(ARGV[2]) - 1)
end
return {fields[1], fields[2] or '', length, redis.call('EXISTS', KEYS[3]), chunks, fields[3] or ''}
