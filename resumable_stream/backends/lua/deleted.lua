-- Is this stream's tombstone there (deleted moments ago, see delete.lua)?
-- KEYS[1] meta hash
-- Returns 1 if so, else 0.
if redis.call('HGET', KEYS[1], 'status') == 'deleted' then
  return 1
end
return 0
