"""Lua scripts: every multi-key write that must not half-apply is one script call.

Keys are always passed in KEYS (built by bus.keys); scripts never assemble key names.
"""

from __future__ import annotations

# Status ranks: a status only moves forward, except retrying -> retrying (attempt count)
# and an explicit force (dead-letter replay re-queues a dead message).
STATUS_RANK_LUA = """
local rank = {queued=1, retrying=2, delivered=3, dead=3, expired=3, read=4, acked=5}
"""

# KEYS: dedup (by dedup key), status, agents, sender history, dedup (by id), sent-rate bucket
# ARGV: id, now_ms, dedup_window_s, retention_s, queue, sender, wire, ts_ms,
#       history_limit, expires_at_ms ('' if none)
# Returns the existing id for a duplicate (same dedup key or same id), else false (nil).
ACCEPT = """
local existing = redis.call('GET', KEYS[1]) or redis.call('GET', KEYS[5])
if existing then return existing end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[5], ARGV[1], 'EX', ARGV[3])
redis.call('HSET', KEYS[2], 'status', 'queued', 'queued_at', ARGV[2], 'updated_at', ARGV[2],
  'attempts', 0, 'queue', ARGV[5], 'from', ARGV[6])
if ARGV[10] ~= '' then redis.call('HSET', KEYS[2], 'expires_at', ARGV[10]) end
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], 'NX', ARGV[2], ARGV[6])
redis.call('ZADD', KEYS[4], ARGV[8], ARGV[7])
redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -(tonumber(ARGV[9]) + 1))
redis.call('INCR', KEYS[6])
redis.call('EXPIRE', KEYS[6], 120)
return false
"""

# Undo of ACCEPT when the broker refused the publish: nothing half-written.
# KEYS: dedup, status, sender history, dedup by id   ARGV: id, wire
REVOKE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('DEL', KEYS[4]) end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
"""

# KEYS: status, delivered-set, agents, seq, reply-key, delivered-rate bucket, then per recipient:
#       ready, body, meta, history
# ARGV: id, wire, rank, now_ms, history_limit, retention_s, attempts, reply_channel,
#       ts_ms, then per recipient: agent, inbox channel
# Idempotent per (message, recipient): a redelivered task does not fill an inbox twice.
DELIVER = (
    STATUS_RANK_LUA
    + """
local delivered = 0
local n = (#KEYS - 6) / 4
for i = 1, n do
  local agent = ARGV[9 + 2 * i - 1]
  if redis.call('SADD', KEYS[2], agent) == 1 then
    local base = 6 + (i - 1) * 4
    local seq = redis.call('INCR', KEYS[4])
    local score = string.format('%d', tonumber(ARGV[3]) * 1099511627776 + seq)
    redis.call('HSET', KEYS[base + 2], ARGV[1], ARGV[2])
    redis.call('HSET', KEYS[base + 3], ARGV[1], score .. '|0')
    redis.call('ZADD', KEYS[base + 1], score, ARGV[1])
    redis.call('ZADD', KEYS[base + 4], ARGV[9], ARGV[2])
    redis.call('ZREMRANGEBYRANK', KEYS[base + 4], 0, -(tonumber(ARGV[5]) + 1))
    redis.call('ZADD', KEYS[3], 'NX', ARGV[4], agent)
    redis.call('PUBLISH', ARGV[9 + 2 * i], ARGV[1])
    delivered = delivered + 1
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[6])
if delivered > 0 then
  redis.call('INCRBY', KEYS[6], delivered)
  redis.call('EXPIRE', KEYS[6], 120)
end
local current = redis.call('HGET', KEYS[1], 'status')
if not current or (rank[current] or 0) < 3 then
  redis.call('HSET', KEYS[1], 'status', 'delivered', 'delivered_at', ARGV[4],
    'updated_at', ARGV[4], 'attempts', ARGV[7], 'recipients', redis.call('SCARD', KEYS[2]))
  redis.call('EXPIRE', KEYS[1], ARGV[6])
end
if ARGV[8] ~= '' and delivered > 0 then
  redis.call('SET', KEYS[5], ARGV[1], 'EX', ARGV[6])
  redis.call('PUBLISH', ARGV[8], ARGV[1])
end
return delivered
"""
)

# KEYS: ready, leased, body, meta   ARGV: now_ms, lease_ms, limit
# Returns a flat list: id, wire, delivery count, ...
READ = """
local now = tonumber(ARGV[1])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('ZREM', KEYS[2], id)
  local meta = redis.call('HGET', KEYS[4], id)
  if meta then redis.call('ZADD', KEYS[1], string.match(meta, '^(%d+)|'), id) end
end
local out = {}
local deadline = now + tonumber(ARGV[2])
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1)) do
  redis.call('ZREM', KEYS[1], id)
  local body = redis.call('HGET', KEYS[3], id)
  if body then
    local score, count = string.match(redis.call('HGET', KEYS[4], id), '^(%d+)|(%d+)$')
    count = tonumber(count) + 1
    redis.call('HSET', KEYS[4], id, score .. '|' .. count)
    redis.call('ZADD', KEYS[2], deadline, id)
    out[#out + 1] = id
    out[#out + 1] = body
    out[#out + 1] = count
  end
end
return out
"""

# KEYS: ready, leased, body, meta   ARGV: ids...   Returns the ids that were in the inbox.
ACK = """
local acked = {}
for _, id in ipairs(ARGV) do
  if redis.call('HDEL', KEYS[3], id) == 1 then
    redis.call('HDEL', KEYS[4], id)
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    acked[#acked + 1] = id
  end
end
return acked
"""

# KEYS: status keys   ARGV: new status, now_ms, retention_s, force ('1'/'0'), then
# field/value pairs to set alongside. Returns how many statuses moved.
ADVANCE_STATUS = (
    STATUS_RANK_LUA
    + """
local new = ARGV[1]
local moved = 0
for _, key in ipairs(KEYS) do
  local current = redis.call('HGET', key, 'status')
  local ok = ARGV[4] == '1'
  if not ok and current then
    ok = (rank[current] or 0) < rank[new] or (current == 'retrying' and new == 'retrying')
  elseif not ok then
    -- no status (never sent through the API, or past retention): record only deaths
    ok = new == 'dead' or new == 'expired'
  end
  if ok then
    redis.call('HSET', key, 'status', new, new .. '_at', ARGV[2], 'updated_at', ARGV[2])
    for i = 5, #ARGV, 2 do redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
    if new == 'acked' then redis.call('HINCRBY', key, 'acks', 1) end
    redis.call('EXPIRE', key, ARGV[3])
    moved = moved + 1
  end
end
return moved
"""
)

# KEYS: subs hash of the agent, topics set, then topic:{t} for each topic
# ARGV: agent, max topics, filters JSON, then the topics (same order as their keys)
# Returns -(current count) when the limit would be exceeded, else the new total.
SUBSCRIBE = """
local added = 0
for i = 4, #ARGV do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 then added = added + 1 end
end
local total = redis.call('HLEN', KEYS[1]) + added
if total > tonumber(ARGV[2]) then return -redis.call('HLEN', KEYS[1]) - 1 end
for i = 4, #ARGV do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[3])
  redis.call('HSET', KEYS[i - 1], ARGV[1], ARGV[3])
  redis.call('SADD', KEYS[2], ARGV[i])
end
return total
"""

# KEYS: subs hash, topics set, topic:{t}...   ARGV: agent, topics...
UNSUBSCRIBE = """
local removed = 0
for i = 2, #ARGV do
  removed = removed + redis.call('HDEL', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[i + 1], ARGV[1])
  if redis.call('HLEN', KEYS[i + 1]) == 0 then redis.call('SREM', KEYS[2], ARGV[i]) end
end
return removed
"""

# Token bucket. KEYS: bucket   ARGV: rate per s, burst, now_ms, cost
# Returns {allowed (1/0), ms to wait}.
RATE_LIMIT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = math.ceil((cost - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait}
"""
