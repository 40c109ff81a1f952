-- Ask the producer of a running stream to stop; it sees the flag on its next write
-- (at least every lease / 3).
-- KEYS[1] meta hash
-- Returns 1 if the stream was running, else 0.
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then
  return 0
end
redis.call('HSET', KEYS[1], 'stop', '1')
return 1
