"""Lua scripts: every multi-key write that must not half-apply is one script call.

Keys are always passed in KEYS (built by bus.keys); scripts never assemble key names.
"""

from __future__ import annotations

# Status ranks: a status only moves forward, except retrying -> retrying (attempt count)
# and an explicit force (dead-letter replay re-queues a dead message).
STATUS_RANK_LUA = """
local rank = {queued=1, retrying=2, delivered=3, dead=3, expired=3, read=4, acked=5}
"""

# Status timestamps come from Redis's own clock: one clock for every transition, whichever
# host the sender, the worker or the reader runs on. `now_ms` is a number, `stamp` the same
# instant as ms with µs decimals ("1764000000123.456").
NOW_LUA = """
local t = redis.call('TIME')
local us = tonumber(t[2])
local now_ms = tonumber(t[1]) * 1000 + math.floor(us / 1000)
local stamp = t[1] .. string.format('%03d.%03d', math.floor(us / 1000), us % 1000)
"""

# The send side's one call: rate limit, dedup, status `queued`, sender history, audit.
# KEYS: agents, sent-rate bucket, audit stream, rate-limit bucket, then per message:
#       dedup (by dedup key), dedup (by id), status, sender history
# ARGV: dedup_window_s, retention_s, history_limit, audit_maxlen, rate per s ('' = no
#       limit), burst, cost, then per message: id, queue, sender, wire, ts_ms,
#       expires_at_ms ('' if none), audit entry (JSON list of field, value...), pending
# Returns {'ok', d1, ..., dn}: di is '' when message i was accepted, the id it duplicates
# (same dedup key or same id), or 'retry-as:<id>' (see below); or {'rate_limited', ms to
# wait}, writing nothing.
# Dedup records of messages a client may send again (its own id or dedup key) are written
# 'pending:<id>' and COMMITted once the broker has confirmed. A record still pending means
# its sender died (or is still publishing): the broker may or may not have that message.
# The retry is then told to go out under the pending id ('retry-as:<id>', nothing written
# for it): if both copies reach a worker, delivery is idempotent per id, so the message is
# neither lost nor delivered twice.
ADMIT = (
    NOW_LUA
    + """
if ARGV[5] ~= '' then
  local rate, burst, cost = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  local state = redis.call('HMGET', KEYS[4], 'tokens', 'ts')
  local tokens = tonumber(state[1]) or burst
  local ts = tonumber(state[2]) or now_ms
  tokens = math.min(burst, tokens + math.max(0, now_ms - ts) * rate / 1000)
  local allowed = tokens >= cost
  if allowed then tokens = tokens - cost end
  redis.call('HSET', KEYS[4], 'tokens', tostring(tokens), 'ts', now_ms)
  redis.call('PEXPIRE', KEYS[4], math.ceil(burst * 1000 / rate) + 1000)
  if not allowed then
    return {'rate_limited', tostring(math.ceil((cost - tokens) * 1000 / rate))}
  end
end
local out = {'ok'}
local accepted = 0
for i = 1, (#KEYS - 4) / 4 do
  local k = 4 + (i - 1) * 4
  local a = 7 + (i - 1) * 8
  local id = ARGV[a + 1]
  local existing = redis.call('GET', KEYS[k + 1]) or redis.call('GET', KEYS[k + 2])
  local pending = existing and string.sub(existing, 1, 8) == 'pending:'
  if existing and not pending then
    out[#out + 1] = existing
  elseif pending and string.sub(existing, 9) ~= id then
    out[#out + 1] = 'retry-as:' .. string.sub(existing, 9)
  else
    out[#out + 1] = ''
    accepted = accepted + 1
    local record = id
    if ARGV[a + 8] == '1' then record = 'pending:' .. id end
    redis.call('SET', KEYS[k + 1], record, 'EX', ARGV[1])
    redis.call('SET', KEYS[k + 2], record, 'EX', ARGV[1])
    -- The publish may go out beside this call, so a worker can be first: never move a
    -- status back.
    if redis.call('EXISTS', KEYS[k + 3]) == 0 then
      redis.call('HSET', KEYS[k + 3], 'status', 'queued', 'updated_at', stamp, 'attempts', 0)
    end
    redis.call('HSET', KEYS[k + 3], 'queued_at', stamp, 'queue', ARGV[a + 2], 'from', ARGV[a + 3])
    if ARGV[a + 6] ~= '' then redis.call('HSET', KEYS[k + 3], 'expires_at', ARGV[a + 6]) end
    redis.call('EXPIRE', KEYS[k + 3], ARGV[2])
    redis.call('ZADD', KEYS[1], 'NX', now_ms, ARGV[a + 3])
    redis.call('ZADD', KEYS[k + 4], ARGV[a + 5], ARGV[a + 4])
    redis.call('ZREMRANGEBYRANK', KEYS[k + 4], 0, -(tonumber(ARGV[3]) + 1))
  end
  local entry = cjson.decode(ARGV[a + 7])
  if #entry > 0 and string.sub(out[#out], 1, 9) ~= 'retry-as:' then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', unpack(entry))
  end
end
if accepted > 0 then
  redis.call('INCRBY', KEYS[2], accepted)
  redis.call('EXPIRE', KEYS[2], 120)
end
return out
"""
)

# Undo of ADMIT when the broker refused the publish: nothing half-written.
# KEYS: dedup, status, sender history, dedup by id   ARGV: id, wire
REVOKE = """
for _, k in ipairs({1, 4}) do
  local value = redis.call('GET', KEYS[k])
  if value == ARGV[1] or value == 'pending:' .. ARGV[1] then redis.call('DEL', KEYS[k]) end
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
"""

# The broker confirmed these messages: their pending dedup records become final.
# KEYS: per message: dedup (by dedup key), dedup (by id)   ARGV: dedup_window_s, ids...
COMMIT = """
for i = 2, #ARGV do
  local pending = 'pending:' .. ARGV[i]
  for k = 2 * (i - 1) - 1, 2 * (i - 1) do
    if redis.call('GET', KEYS[k]) == pending then
      redis.call('SET', KEYS[k], ARGV[i], 'EX', ARGV[1])
    end
  end
end
return 1
"""

# KEYS: status, delivered-set, agents, seq, reply-key, delivered-rate bucket, then per recipient:
#       ready, body, meta, history
# ARGV: id, wire, rank, history_limit, retention_s, attempts, reply_channel, ts_ms,
#       then per recipient: agent, inbox channel
# Idempotent per (message, recipient): a redelivered task does not fill an inbox twice.
DELIVER = (
    STATUS_RANK_LUA
    + NOW_LUA
    + """
local delivered = 0
local n = (#KEYS - 6) / 4
for i = 1, n do
  local agent = ARGV[8 + 2 * i - 1]
  if redis.call('SADD', KEYS[2], agent) == 1 then
    local base = 6 + (i - 1) * 4
    local seq = redis.call('INCR', KEYS[4])
    local score = string.format('%d', tonumber(ARGV[3]) * 1099511627776 + seq)
    redis.call('HSET', KEYS[base + 2], ARGV[1], ARGV[2])
    redis.call('HSET', KEYS[base + 3], ARGV[1], score .. '|0')
    redis.call('ZADD', KEYS[base + 1], score, ARGV[1])
    redis.call('ZADD', KEYS[base + 4], ARGV[8], ARGV[2])
    redis.call('ZREMRANGEBYRANK', KEYS[base + 4], 0, -(tonumber(ARGV[4]) + 1))
    redis.call('ZADD', KEYS[3], 'NX', now_ms, agent)
    redis.call('PUBLISH', ARGV[8 + 2 * i], ARGV[1])
    delivered = delivered + 1
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[5])
if delivered > 0 then
  redis.call('INCRBY', KEYS[6], delivered)
  redis.call('EXPIRE', KEYS[6], 120)
end
local current = redis.call('HGET', KEYS[1], 'status')
if not current or (rank[current] or 0) < 3 then
  redis.call('HSET', KEYS[1], 'status', 'delivered', 'delivered_at', stamp,
    'updated_at', stamp, 'attempts', ARGV[6], 'recipients', redis.call('SCARD', KEYS[2]))
  redis.call('EXPIRE', KEYS[1], ARGV[5])
end
if ARGV[7] ~= '' and delivered > 0 then
  redis.call('SET', KEYS[5], ARGV[1], 'EX', ARGV[5])
  redis.call('PUBLISH', ARGV[7], ARGV[1])
end
return delivered
"""
)

# KEYS: ready, leased, body, meta, agents, agent's last-seen
# ARGV: now_ms, lease_ms, limit, agent
# Registers the reader (first use) and notes when it was last seen, brings expired leases
# back, then leases up to `limit`. Returns a flat list: id, wire, delivery count, ...
READ = """
local now = tonumber(ARGV[1])
redis.call('ZADD', KEYS[5], 'NX', now, ARGV[4])
redis.call('SET', KEYS[6], now)
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

# KEYS: status keys   ARGV: new status, retention_s, force ('1'/'0'), then field/value
# pairs to set alongside. Returns how many statuses moved.
ADVANCE_STATUS = (
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
    if new == 'acked' then redis.call('HINCRBY', key, 'acks', 1) end
    redis.call('EXPIRE', key, ARGV[2])
    moved = moved + 1
  end
end
return moved
"""
)

# KEYS: subs hash of the agent, topics set, agents zset, agent's last-seen key, then
#       topic:{t} for each topic
# ARGV: agent, max topics, filters JSON, now ms, then the topics (same order as their keys)
# Returns -(current count) when the limit would be exceeded (nothing written), else the
# new total; a subscribing agent is registered and seen in the same call.
SUBSCRIBE = """
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
redis.call('ZADD', KEYS[3], 'NX', ARGV[4], ARGV[1])
redis.call('SET', KEYS[4], ARGV[4])
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
