"""Topic subscriptions: both sides of the index (agent -> topics, topic -> agents) in one
call, within the per-agent limit.

Each script states its KEYS/ARGV contract; keys come from bus.keys, never built here.
"""

from __future__ import annotations

from bus.scripts.fragments import NOW_LUA
from bus.scripts.script import Script

# KEYS: subs hash of the agent, topics set, agents zset, agent's last-seen key, then
#       topic:{t} for each topic
# ARGV: agent, max topics, filters JSON, (unused), then the topics (same order as their keys)
# Returns -(current count) when the limit would be exceeded (nothing written), else the
# new total; a subscribing agent is registered and seen in the same call.
SUBSCRIBE = Script(
    NOW_LUA
    + """
local added = 0
for i = 5, #ARGV do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 then added = added + 1 end
end
local total = redis.call('HLEN', KEYS[1]) + added
if total > tonumber(ARGV[2]) then return -redis.call('HLEN', KEYS[1]) - 1 end
for i = 5, #ARGV do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[3])
  redis.call('HSET', KEYS[i], ARGV[1], ARGV[3])
  redis.call('SADD', KEYS[2], ARGV[i])
end
redis.call('ZADD', KEYS[3], 'NX', now_ms, ARGV[1])
redis.call('SET', KEYS[4], now_ms)
return total
"""
)

# KEYS: subs hash, topics set, topic:{t}...   ARGV: agent, topics...
UNSUBSCRIBE = Script(
    """
local removed = 0
for i = 2, #ARGV do
  removed = removed + redis.call('HDEL', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[i + 1], ARGV[1])
  if redis.call('HLEN', KEYS[i + 1]) == 0 then redis.call('SREM', KEYS[2], ARGV[i]) end
end
return removed
"""
)
