-- Prepended to every script the Upstash REST backend runs (each one in this folder).
-- A JSON request body cannot carry bytes that are not UTF-8, so over REST every argument
-- arrives base64-encoded: decode them into a local ARGV that shadows the global one, and
-- the script below, the very text the TCP backend runs, sees the bytes it would have
-- received over TCP. Stored values and pub/sub messages are therefore identical whichever
-- way a stream was written, and TCP and REST clients can share one database.
local digits = {}
local alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
for i = 1, 64 do
  digits[string.byte(alphabet, i)] = i - 1
end
local byte, char, floor, concat = string.byte, string.char, math.floor, table.concat
local decoded = {}
for i = 1, #ARGV do
  local text = ARGV[i]
  local out = {}
  for j = 1, #text, 4 do
    local a, b, c, d = byte(text, j, j + 3)
    local n = digits[a] * 262144 + digits[b] * 4096 + (digits[c] or 0) * 64 + (digits[d] or 0)
    local x, y, z = floor(n / 65536), floor(n / 256) % 256, n % 256
    if c == 61 then -- '=': one byte in this group
      out[#out + 1] = char(x)
    elseif d == 61 then -- two bytes
      out[#out + 1] = char(x, y)
    else
      out[#out + 1] = char(x, y, z)
    end
  end
  decoded[i] = concat(out)
end
local ARGV = decoded
