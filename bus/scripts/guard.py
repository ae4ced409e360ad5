"""The guard's scripts: a rate-limit charge on its own, and the sampled audit trail.

Each script states its KEYS/ARGV contract; keys come from bus.keys, never built here.
"""

from __future__ import annotations

from bus.scripts.fragments import NOW_LUA, RATE_LUA
from bus.scripts.script import Script

# A rate-limit charge alone (subscriptions at the front door are charged per topic).
# KEYS: rate-limit bucket   ARGV: rate per s, burst, cost
# Returns {'ok'}, {'too_costly', cost} or {'rate_limited', ms to wait}.
CHARGE = Script(
    NOW_LUA
    + RATE_LUA
    + """
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if cost > burst then return {'too_costly', tostring(cost)} end
local ok, wait = take_tokens(KEYS[1], rate, burst, cost)
if not ok then return {'rate_limited', tostring(wait)} end
return {'ok'}
"""
)

# Audit entries, with floods of refusals sampled: per (agent, action) and minute, the 1st,
# 10th, 100th, ... refusal is stored (with how many there were by then), the rest counted,
# so no one agent's refusals can flush the capped stream.
# KEYS: audit stream, then per entry its burst counter   ARGV: maxlen, then per entry:
#       '1' if it is a refusal (sampled) else '0', JSON list of field, value...
AUDIT = Script(
    """
local stored = 0
for i = 2, #KEYS do
  local entry = cjson.decode(ARGV[2 * i - 1])
  local keep = true
  if ARGV[2 * i - 2] == '1' then
    local n = redis.call('INCR', KEYS[i])
    if n == 1 then redis.call('EXPIRE', KEYS[i], 60) end
    local p = 1
    while p < n do p = p * 10 end
    keep = p == n
    if keep and n > 1 then
      entry[#entry + 1] = 'repeats'
      entry[#entry + 1] = tostring(n)
    end
  end
  if keep then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(entry))
    stored = stored + 1
  end
end
return stored
"""
)
