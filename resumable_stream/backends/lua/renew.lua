-- Renew the leases of many streams at once: for each, what write.lua does for a write
-- of no chunks (the same checks, the same expiries, nothing announced).
-- KEYS[3i-2], KEYS[3i-1], KEYS[3i]: stream i's meta hash, chunks list, lease string
-- ARGV[1] ttl ms, ARGV[2] lease ms, then per stream i: ARGV[2i+1] producer token,
-- ARGV[2i+2] stored length (the index the producer writes next)
-- Returns per stream: 1 if a stop was requested, 0 if not, -1 if not the producer of a
-- running stream, -2 if the stored length is not the producer's (chunks lost), -3 if
-- the stream was deleted (its tombstone, see delete.lua).
local ttl, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS / 3 do
  local meta, list, lk = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local token = ARGV[2 * i + 1]
  -- pcall: a key of the wrong type refuses this stream only, not the whole call.
  local fields = redis.pcall('HMGET', meta, 'status', 'producer', 'stop')
  local length = redis.pcall('LLEN', list)
  if not fields.err and fields[1] == 'deleted' then
    out[i] = -3
  elseif fields.err or fields[1] ~= 'running' or fields[2] ~= token then
    out[i] = -1
  elseif type(length) ~= 'number' then
    out[i] = -2
  else
    if length ~= tonumber(ARGV[2 * i + 2]) then
      out[i] = -2
    else
      if length > 0 then
        redis.call('PEXPIRE', list, ttl)
      end
      if lease > 0 then
        redis.call('SET', lk, token, 'PX', lease)
      else
        redis.call('DEL', lk)  -- a lease of 0: the producer releases the stream now
      end
      redis.call('PEXPIRE', meta, ttl)
      out[i] = fields[3] and 1 or 0
    end
  end
end
return out
