"""Mail for agents that never connected ("ghosts"): a sender names them, the bus keeps
their inboxes up to the sender's `MAX_UNSEEN_RECIPIENTS`, and the purge job drops a ghost's
mail once none has come for it within the status retention (its senders' allowance counts
it no more). ADMIT registers each ghost in the `ghosts` zset with the time of its latest
mail; nothing else names these inboxes, so without it they were never purged."""

from __future__ import annotations

from bus.scripts.fragments import NOW_LUA
from bus.scripts.script import Script

# KEYS: ghosts, agents, the ghost's inbox (ready, leased, body, meta, pending, senders), its
#       received history, that history's byte count and per-sender counts, then the
#       unseen-recipient sets of the senders its mail came from
# ARGV: ghost, cutoff ms (its latest mail must be older)
# Returns {'dropped', id...} (the ids of the messages its inbox held), or {'kept'}: it has
# connected since (and leaves the registry), has mail newer than the cutoff, or mail
# admitted and not yet delivered (dropped by a later purge, so no delivery recreates it).
DROP_GHOST = Script(
    NOW_LUA
    + """
local ghost = ARGV[1]
if redis.call('ZSCORE', KEYS[2], ghost) then
  redis.call('ZREM', KEYS[1], ghost)
  return {'kept'}
end
local latest = redis.call('ZSCORE', KEYS[1], ghost)
if latest and tonumber(latest) > tonumber(ARGV[2]) then return {'kept'} end
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now_ms)
if redis.call('ZCARD', KEYS[7]) > 0 then return {'kept'} end
local ids = redis.call('HKEYS', KEYS[5])
for i = 3, 11 do redis.call('DEL', KEYS[i]) end
for i = 12, #KEYS do redis.call('SREM', KEYS[i], ghost) end
redis.call('ZREM', KEYS[1], ghost)
local out = {'dropped'}
for _, id in ipairs(ids) do out[#out + 1] = id end
return out
"""
)
