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
#       dedup (by the sender's dedup key), dedup (by id), status, sender history
# ARGV: dedup_window_s, retention_s, history_limit, audit_maxlen, rate per s ('' = no
#       limit), burst, cost, then per message: id, queue, sender, wire, ts_ms,
#       expires_at_ms ('' if none), audit entry (JSON list of field, value...), pending
# Returns {'ok', d1, ..., dn}: di is '' when message i was accepted, the id it duplicates
# (the same sender's dedup key or id), or 'retry-as:<id>' (see below); {'rate_limited', ms
# to wait}; or {'conflict', i}: message i brings an id another sender's message has. The
# last two write nothing.
# Dedup keys belong to their sender (KEYS hold the sender). A dedup-by-id record says who
# owns the id: '<state>|<sender>', state 'final' or 'pending'; a dedup-key record holds the
# id it stands for, 'pending:<id>' while pending.
# Records of messages a client may send again (its own id or dedup key) are written pending
# and COMMITted once the broker has confirmed. A record still pending means its sender died
# (or is still publishing): the broker may or may not have that message. The retry is then
# told to go out under the pending id ('retry-as:<id>', nothing written for it): if both
# copies reach a worker, delivery is idempotent per id, so the message is neither lost nor
# delivered twice.
ADMIT = (
    NOW_LUA
    + """
local function owner_of(record)
  if not record then return nil, nil end
  local state, owner = string.match(record, '^(%a+)|(.+)$')
  if state then return owner, state == 'pending' end
  return nil, string.sub(record, 1, 8) == 'pending:'  -- a record from before owners
end
local count = (#KEYS - 4) / 4
for i = 1, count do
  local owner = owner_of(redis.call('GET', KEYS[4 + (i - 1) * 4 + 2]))
  if owner and owner ~= ARGV[7 + (i - 1) * 8 + 3] then return {'conflict', i} end
end
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
for i = 1, count do
  local k = 4 + (i - 1) * 4
  local a = 7 + (i - 1) * 8
  local id, sender = ARGV[a + 1], ARGV[a + 3]
  local existing = redis.call('GET', KEYS[k + 1])
  if not existing then
    local _, id_pending = owner_of(redis.call('GET', KEYS[k + 2]))
    if id_pending ~= nil then existing = (id_pending and 'pending:' or '') .. id end
  end
  local pending = existing and string.sub(existing, 1, 8) == 'pending:'
  if existing and not pending then
    out[#out + 1] = existing
  elseif pending and string.sub(existing, 9) ~= id then
    out[#out + 1] = 'retry-as:' .. string.sub(existing, 9)
  else
    out[#out + 1] = ''
    accepted = accepted + 1
    local state = ARGV[a + 8] == '1' and 'pending' or 'final'
    redis.call('SET', KEYS[k + 1], (state == 'pending' and 'pending:' or '') .. id, 'EX', ARGV[1])
    redis.call('SET', KEYS[k + 2], state .. '|' .. sender, 'EX', ARGV[1])
    -- The publish may go out beside this call, so a worker can be first: never move a
    -- status back.
    if redis.call('EXISTS', KEYS[k + 3]) == 0 then
      redis.call('HSET', KEYS[k + 3], 'status', 'queued', 'updated_at', stamp, 'attempts', 0)
    end
    redis.call('HSET', KEYS[k + 3], 'queued_at', stamp, 'queue', ARGV[a + 2], 'from', sender)
    if ARGV[a + 6] ~= '' then redis.call('HSET', KEYS[k + 3], 'expires_at', ARGV[a + 6]) end
    redis.call('EXPIRE', KEYS[k + 3], ARGV[2])
    redis.call('ZADD', KEYS[1], 'NX', now_ms, sender)
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
# KEYS: dedup (by key), status, sender history, dedup by id   ARGV: id, wire, sender
REVOKE = """
local value = redis.call('GET', KEYS[1])
if value == ARGV[1] or value == 'pending:' .. ARGV[1] then redis.call('DEL', KEYS[1]) end
value = redis.call('GET', KEYS[4])
if value == 'pending|' .. ARGV[3] or value == 'final|' .. ARGV[3] then
  redis.call('DEL', KEYS[4])
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
"""

# The broker confirmed these messages: their pending dedup records become final.
# KEYS: per message: dedup (by key), dedup (by id)
# ARGV: dedup_window_s, then per message: id, sender
COMMIT = """
for i = 1, #KEYS / 2 do
  local id, sender = ARGV[2 * i], ARGV[2 * i + 1]
  if redis.call('GET', KEYS[2 * i - 1]) == 'pending:' .. id then
    redis.call('SET', KEYS[2 * i - 1], id, 'EX', ARGV[1])
  end
  if redis.call('GET', KEYS[2 * i]) == 'pending|' .. sender then
    redis.call('SET', KEYS[2 * i], 'final|' .. sender, 'EX', ARGV[1])
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
# ARGV: lease_ms, limit, agent
# Registers the reader (first use) and notes when it was last seen, brings expired leases
# back, then leases up to `limit`, all by Redis's clock (a reader on a host whose clock runs
# ahead must not take over others' leases). Returns a flat list: lease deadline ms, then
# id, wire, delivery count, ...
READ = (
    NOW_LUA
    + """
local now = now_ms
redis.call('ZADD', KEYS[5], 'NX', now, ARGV[3])
redis.call('SET', KEYS[6], now)
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('ZREM', KEYS[2], id)
  local meta = redis.call('HGET', KEYS[4], id)
  if meta then redis.call('ZADD', KEYS[1], string.match(meta, '^(%d+)|'), id) end
end
local deadline = now + tonumber(ARGV[1])
local out = {deadline}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)) do
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
)

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
# ARGV: agent, max topics, filters JSON, (unused), then the topics (same order as their keys)
# Returns -(current count) when the limit would be exceeded (nothing written), else the
# new total; a subscribing agent is registered and seen in the same call.
SUBSCRIBE = (
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
UNSUBSCRIBE = """
local removed = 0
for i = 2, #ARGV do
  removed = removed + redis.call('HDEL', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[i + 1], ARGV[1])
  if redis.call('HLEN', KEYS[i + 1]) == 0 then redis.call('SREM', KEYS[2], ARGV[i]) end
end
return removed
"""
