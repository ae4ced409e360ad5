"""Message status moves forward only (see fragments.STATUS_RANK_LUA).

Each script states its KEYS/ARGV contract; keys come from bus.keys, never built here.
"""

from __future__ import annotations

from bus.scripts.fragments import NOW_LUA, STATUS_RANK_LUA
from bus.scripts.script import Script

# KEYS: status keys   ARGV: new status, retention_s, force ('1'/'0'), then field/value
# pairs to set alongside. Returns how many statuses moved. (Acks are counted where they
# happen, by ACK_READ and TAKE: a message to several is `acked` once all of them acked.)
ADVANCE_STATUS = Script(
    STATUS_RANK_LUA
    + NOW_LUA
    + """
local new = ARGV[1]
local moved = 0
for _, key in ipairs(KEYS) do
  local current = redis.call('HGET', key, 'status')
  local ok = ARGV[3] == '1'
  if not ok and current then
    ok = (rank[current] or 0) < rank[new] or (current == 'retrying' and new == 'retrying')
  elseif not ok then
    -- no status (never sent through the API, or past retention): record only deaths
    ok = new == 'dead' or new == 'expired'
  end
  if ok then
    redis.call('HSET', key, 'status', new, new .. '_at', stamp, 'updated_at', stamp)
    for i = 4, #ARGV, 2 do redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
    redis.call('EXPIRE', key, ARGV[2])
    moved = moved + 1
  end
end
return moved
"""
)
