-- Put before each script when it runs over Upstash's REST API: a JSON body carries
-- text only, so every argument travels base64-encoded; this decodes them into a local
-- ARGV, and the script after it sees the very bytes it gets over TCP.
local values = {}
local code = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
for i = 1, 64 do
  values[code:byte(i)] = i - 1
end
local function decode(text)
  local out = {}
  for at = 1, #text, 4 do
    local c1, c2, c3, c4 = text:byte(at, at + 3)
    local bits = values[c1] * 262144 + values[c2] * 4096
    if c3 ~= 61 then bits = bits + values[c3] * 64 end
    if c4 ~= 61 then bits = bits + values[c4] end
    local b1 = math.floor(bits / 65536)
    local b2 = math.floor(bits / 256) % 256
    local b3 = bits % 256
    if c3 == 61 then
      out[#out + 1] = string.char(b1)
    elseif c4 == 61 then
      out[#out + 1] = string.char(b1, b2)
    else
      out[#out + 1] = string.char(b1, b2, b3)
    end
  end
  return table.concat(out)
end
local plain = {}
for i = 1, #ARGV do
  plain[i] = decode(ARGV[i])
end
local ARGV = plain
