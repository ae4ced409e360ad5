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

# Keeps a history zset within its entry and byte caps, oldest first out. `bytes_key` holds
# the total length of its members (kept by every writer and trimmer of the zset). A received
# history is also fair: `senders_key` counts each sender's entries, and while the sender of
# the entry being added holds more than `share` of them, its own oldest entry goes first, so
# one agent flooding another cannot evict everyone else's mail. (`senders_key` false: a
# history of what one agent sent, where there is no one else to be fair to.)
TRIM_HISTORY_LUA = """
local function sender_of(member)
  return string.match(member, '"from":"([^"]*)"')
end
local function oldest_from(key, sender)
  local start = 0
  while true do
    local chunk = redis.call('ZRANGE', key, start, start + 63)
    if #chunk == 0 then return nil end
    for _, member in ipairs(chunk) do
      if sender_of(member) == sender then return member end
    end
    start = start + 64
  end
end
local function forget(senders_key, member)
  if not senders_key then return end
  local from = sender_of(member)
  if from and redis.call('HINCRBY', senders_key, from, -1) <= 0 then
    redis.call('HDEL', senders_key, from)
  end
end
local function trim_history(key, bytes_key, senders_key, sender, max_entries, max_bytes, share)
  local size = tonumber(redis.call('GET', bytes_key) or '0')
  local n = redis.call('ZCARD', key)
  while n > 0 and (n > max_entries or size > max_bytes) do
    local victim = nil
    if senders_key and tonumber(redis.call('HGET', senders_key, sender) or '0') > share then
      victim = oldest_from(key, sender)
    end
    victim = victim or redis.call('ZRANGE', key, 0, 0)[1]
    redis.call('ZREM', key, victim)
    forget(senders_key, victim)
    size = size - #victim
    n = n - 1
  end
  if size < 0 or n == 0 then size = 0 end
  redis.call('SET', bytes_key, size)
end
local function add_history(key, bytes_key, senders_key, sender, score, member, max_entries,
    max_bytes, share)
  if redis.call('ZADD', key, score, member) == 1 then
    redis.call('INCRBY', bytes_key, #member)
    if senders_key then redis.call('HINCRBY', senders_key, sender, 1) end
  end
  trim_history(key, bytes_key, senders_key, sender, max_entries, max_bytes, share)
end
"""

# A token bucket: `cost` tokens from `key`, refilled at `rate`/s up to `burst`. Returns true,
# or false and the ms until there are enough. Needs NOW_LUA.
RATE_LUA = """
local function take_tokens(key, rate, burst, cost)
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(state[1]) or burst
  local ts = tonumber(state[2]) or now_ms
  tokens = math.min(burst, tokens + math.max(0, now_ms - ts) * rate / 1000)
  local allowed = tokens >= cost
  if allowed then tokens = tokens - cost end
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', now_ms)
  redis.call('PEXPIRE', key, math.ceil(burst * 1000 / rate) + 1000)
  if allowed then return true, 0 end
  return false, math.ceil((cost - tokens) * 1000 / rate)
end
"""

# A rate-limit charge alone (subscriptions at the front door are charged per topic).
# KEYS: rate-limit bucket   ARGV: rate per s, burst, cost
# Returns {'ok'}, {'too_costly', cost} or {'rate_limited', ms to wait}.
CHARGE = (
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

# The send side's one call: refusals first (an id another sender owns, mail for an agent
# that has never connected past the sender's allowance, a full inbox or the sender's share
# of it, the rate limit), then dedup, status `queued`, the sender's history and audit: all
# of it or none of it.
# KEYS: agents, sent-rate bucket, audit stream, rate-limit bucket, then per message:
#       dedup (by the sender's dedup key), dedup (by id), status, sender history, its byte
#       count, the sender's set of not-yet-seen recipients, then for each recipient the
#       sender resolved (one for a direct message): its inbox body, the inbox's admitted-
#       not-yet-delivered zset, and its per-sender counts
# ARGV: dedup_window_s, retention_s, history_limit, audit_maxlen, rate per s ('' = no
#       limit), burst, sender share of an inbox (messages), history_max_bytes, inbox_cap,
#       unseen_cap, message count, then per message: id, queue, sender, wire, ts_ms,
#       expires_at_ms ('' if none), audit entry (JSON list of field, value...), pending
#       ('1'/'0'), direct recipient ('' for topic and broadcast), recipient declared ('1'
#       when the ACL names it), the number of recipients n, then their n agent ids
# Returns {'ok', d1, ..., dn}: di is '' when message i was accepted, the id it duplicates
# (the same sender's dedup key or id), or 'retry-as:<id>' (see below). Or, writing nothing
# but the rate bucket: {'rate_limited', ms to wait}, {'too_costly', cost} (more than the
# bucket ever holds), {'conflict', i} (message i brings an id another sender's message has),
# {'unknown_agent', i, agent} (never connected, and the sender already has mail waiting for
# unseen_cap such agents), {'inbox_full', i, agent, depth} or {'share_full', i, agent, held}.
# An inbox counts what it holds and what was admitted for it and not yet delivered (those
# entries expire with the message, or after the dedup window), and this call's own messages.
# The cost of a message is its recipients (at least 1): a fan-out is charged per recipient.
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
    + TRIM_HISTORY_LUA
    + RATE_LUA
    + """
local function owner_of(record)
  if not record then return nil, nil end
  local state, owner = string.match(record, '^(%a+)|(.+)$')
  if state then return owner, state == 'pending' end
  return nil, string.sub(record, 1, 8) == 'pending:'  -- a record from before owners
end
local messages = {}
local k, a = 4, 11
for i = 1, tonumber(ARGV[11]) do
  local m = {k = k, a = a, n = tonumber(ARGV[a + 11])}
  m.id, m.sender, m.to = ARGV[a + 1], ARGV[a + 3], ARGV[a + 9]
  m.expires = ARGV[a + 6] ~= '' and tonumber(ARGV[a + 6]) or now_ms + tonumber(ARGV[1]) * 1000
  messages[i] = m
  k = k + 6 + 3 * m.n
  a = a + 11 + m.n
end
-- 1. What each message is: a repeat of an earlier one (also of one earlier in this very
-- call: the same sender's dedup key or id twice in a batch), or new.
local cost = 0
local claimed = {}
for i, m in ipairs(messages) do
  local owner = owner_of(redis.call('GET', KEYS[m.k + 2]))
  if owner and owner ~= m.sender then return {'conflict', i} end
  local existing = claimed[KEYS[m.k + 1]] or claimed[KEYS[m.k + 2]]
  existing = existing or redis.call('GET', KEYS[m.k + 1])
  if not existing then
    local _, id_pending = owner_of(redis.call('GET', KEYS[m.k + 2]))
    if id_pending ~= nil then existing = (id_pending and 'pending:' or '') .. m.id end
  end
  local pending = existing and string.sub(existing, 1, 8) == 'pending:'
  if existing and not pending then
    m.outcome = existing
  elseif pending and string.sub(existing, 9) ~= m.id then
    m.outcome = 'retry-as:' .. string.sub(existing, 9)
  else
    m.outcome = ''
    cost = cost + math.max(1, m.n)
    claimed[KEYS[m.k + 1]] = m.id
    claimed[KEYS[m.k + 2]] = m.id
  end
end
-- 2. Bounds on what the new ones would store, counting this call's own messages too.
local unseen_new, inbox_new, share_new = {}, {}, {}
for i, m in ipairs(messages) do
  if m.outcome == '' then
    if m.to ~= '' and ARGV[m.a + 10] ~= '1' and not redis.call('ZSCORE', KEYS[1], m.to) then
      m.unseen = true
      local set = KEYS[m.k + 6]
      if redis.call('SISMEMBER', set, m.to) == 0 and not unseen_new[set .. ' ' .. m.to] then
        local held = redis.call('SCARD', set) + (unseen_new[set] or 0)
        if held >= tonumber(ARGV[10]) then return {'unknown_agent', i, m.to} end
        unseen_new[set .. ' ' .. m.to] = true
        unseen_new[set] = (unseen_new[set] or 0) + 1
      end
    end
    for r = 1, m.n do
      local body = KEYS[m.k + 6 + 3 * r - 2]
      local pending = KEYS[m.k + 6 + 3 * r - 1]
      local senders = KEYS[m.k + 6 + 3 * r]
      local agent = ARGV[m.a + 11 + r]
      if inbox_new[body] == nil then
        redis.call('ZREMRANGEBYSCORE', pending, '-inf', now_ms)
        inbox_new[body] = redis.call('HLEN', body) + redis.call('ZCARD', pending)
      end
      if inbox_new[body] >= tonumber(ARGV[9]) then
        return {'inbox_full', i, agent, inbox_new[body]}
      end
      local mine = senders .. ' ' .. m.sender
      if share_new[mine] == nil then
        share_new[mine] = tonumber(redis.call('HGET', senders, m.sender) or '0')
      end
      if agent ~= m.sender and share_new[mine] >= tonumber(ARGV[7]) then
        return {'share_full', i, agent, share_new[mine]}
      end
      inbox_new[body] = inbox_new[body] + 1
      share_new[mine] = share_new[mine] + 1
    end
  end
end
-- 3. The rate limit, charged for every recipient of the new messages.
if ARGV[5] ~= '' and cost > 0 then
  local rate, burst = tonumber(ARGV[5]), tonumber(ARGV[6])
  if cost > burst then return {'too_costly', cost} end
  local ok, wait = take_tokens(KEYS[4], rate, burst, cost)
  if not ok then return {'rate_limited', tostring(wait)} end
end
-- 4. Record the new ones.
local out = {'ok'}
local accepted = 0
for _, m in ipairs(messages) do
  local k, a = m.k, m.a
  if m.outcome == '' then
    accepted = accepted + 1
    local state = ARGV[a + 8] == '1' and 'pending' or 'final'
    redis.call('SET', KEYS[k + 1], (state == 'pending' and 'pending:' or '') .. m.id, 'EX', ARGV[1])
    redis.call('SET', KEYS[k + 2], state .. '|' .. m.sender, 'EX', ARGV[1])
    -- A worker can be first when this call is retried after a publish: never move a
    -- status back.
    if redis.call('EXISTS', KEYS[k + 3]) == 0 then
      redis.call('HSET', KEYS[k + 3], 'status', 'queued', 'updated_at', stamp, 'attempts', 0)
    end
    redis.call('HSET', KEYS[k + 3], 'queued_at', stamp, 'queue', ARGV[a + 2], 'from', m.sender)
    if ARGV[a + 6] ~= '' then redis.call('HSET', KEYS[k + 3], 'expires_at', ARGV[a + 6]) end
    redis.call('EXPIRE', KEYS[k + 3], ARGV[2])
    redis.call('ZADD', KEYS[1], 'NX', now_ms, m.sender)
    add_history(KEYS[k + 4], KEYS[k + 5], false, m.sender, ARGV[a + 5], ARGV[a + 4],
      tonumber(ARGV[3]), tonumber(ARGV[8]), 0)
    if m.unseen then
      redis.call('SADD', KEYS[k + 6], m.to)
      redis.call('EXPIRE', KEYS[k + 6], ARGV[2])
    elseif m.to ~= '' then
      redis.call('SREM', KEYS[k + 6], m.to)  -- it has connected since: no longer unseen
    end
    for r = 1, m.n do
      local pending = KEYS[k + 6 + 3 * r - 1]
      redis.call('ZADD', pending, m.expires, m.id)
      redis.call('PEXPIREAT', pending, math.max(m.expires, now_ms + tonumber(ARGV[1]) * 1000))
    end
  end
  out[#out + 1] = m.outcome
  local entry = cjson.decode(ARGV[a + 7])
  if #entry > 0 and string.sub(m.outcome, 1, 9) ~= 'retry-as:' then
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
# KEYS: dedup (by key), status, sender history, dedup by id, sender history bytes, then the
#       admitted-not-yet-delivered zset of each recipient
# ARGV: id, wire, sender
REVOKE = """
for i = 6, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
local value = redis.call('GET', KEYS[1])
if value == ARGV[1] or value == 'pending:' .. ARGV[1] then redis.call('DEL', KEYS[1]) end
value = redis.call('GET', KEYS[4])
if value == 'pending|' .. ARGV[3] or value == 'final|' .. ARGV[3] then
  redis.call('DEL', KEYS[4])
end
redis.call('DEL', KEYS[2])
if redis.call('ZREM', KEYS[3], ARGV[2]) == 1 then redis.call('DECRBY', KEYS[5], #ARGV[2]) end
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

# KEYS: status, delivered-set, agents, seq, reply-key, delivered-rate bucket, then per
#       recipient: ready, body, meta, history, history bytes, history senders, the inbox's
#       admitted-not-yet-delivered zset, the inbox's per-sender counts
# ARGV: id, wire, rank, history_limit, retention_s, attempts, reply_channel, ts_ms,
#       history_max_bytes, sender, a sender's share of a history (entries), then per
#       recipient: agent, inbox channel
# Idempotent per (message, recipient): a redelivered task does not fill an inbox twice.
# Delivering registers no agent: an agent exists once it connects (bus.keyring / READ).
# An inbox entry's meta is "score|delivery count|sender" (ACK counts the sender down).
DELIVER = (
    STATUS_RANK_LUA
    + NOW_LUA
    + TRIM_HISTORY_LUA
    + """
local delivered = 0
local per = 8
local n = (#KEYS - 6) / per
local sender = ARGV[10]
for i = 1, n do
  local agent = ARGV[11 + 2 * i - 1]
  local base = 6 + (i - 1) * per
  if redis.call('SADD', KEYS[2], agent) == 1 then
    local seq = redis.call('INCR', KEYS[4])
    local score = string.format('%d', tonumber(ARGV[3]) * 1099511627776 + seq)
    redis.call('HSET', KEYS[base + 2], ARGV[1], ARGV[2])
    redis.call('HSET', KEYS[base + 3], ARGV[1], score .. '|0|' .. sender)
    redis.call('ZADD', KEYS[base + 1], score, ARGV[1])
    redis.call('HINCRBY', KEYS[base + 8], sender, 1)
    add_history(KEYS[base + 4], KEYS[base + 5], KEYS[base + 6], sender, ARGV[8], ARGV[2],
      tonumber(ARGV[4]), tonumber(ARGV[9]), tonumber(ARGV[11]))
    redis.call('PUBLISH', ARGV[11 + 2 * i], ARGV[1])
    delivered = delivered + 1
  end
  redis.call('ZREM', KEYS[base + 7], ARGV[1])
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

# History past its retention, with its byte count (and its per-sender counts) kept.
# KEYS: history, history bytes[, history senders]   ARGV: cutoff score (ms).
# Returns how many were removed.
TRIM_HISTORY_BEFORE = (
    TRIM_HISTORY_LUA
    + """
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local size = 0
for _, member in ipairs(old) do
  size = size + #member
  forget(KEYS[3], member)
end
if #old > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
  if redis.call('DECRBY', KEYS[2], size) < 0 then redis.call('SET', KEYS[2], 0) end
end
return #old
"""
)

# Audit entries, with floods of refusals sampled: per (agent, action) and minute, the 1st,
# 10th, 100th, ... refusal is stored (with how many there were by then), the rest counted,
# so no one agent's refusals can flush the capped stream.
# KEYS: audit stream, then per entry its burst counter   ARGV: maxlen, then per entry:
#       '1' if it is a refusal (sampled) else '0', JSON list of field, value...
AUDIT = """
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
    local score, count, rest = string.match(redis.call('HGET', KEYS[4], id), '^(%d+)|(%d+)(.*)$')
    count = tonumber(count) + 1
    redis.call('HSET', KEYS[4], id, score .. '|' .. count .. rest)
    redis.call('ZADD', KEYS[2], deadline, id)
    out[#out + 1] = id
    out[#out + 1] = body
    out[#out + 1] = count
  end
end
return out
"""
)

# KEYS: ready, leased, body, meta, per-sender counts   ARGV: ids...
# Returns the ids that were in the inbox.
ACK = """
local acked = {}
for _, id in ipairs(ARGV) do
  local meta = redis.call('HGET', KEYS[4], id)
  if redis.call('HDEL', KEYS[3], id) == 1 then
    local from = meta and string.match(meta, '^%d+|%d+|(.+)$')
    if from and redis.call('HINCRBY', KEYS[5], from, -1) <= 0 then
      redis.call('HDEL', KEYS[5], from)
    end
    redis.call('HDEL', KEYS[4], id)
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    acked[#acked + 1] = id
  end
end
return acked
"""

# A worker agent starting its handler on a message: counts the run, unless the message is
# no longer in the inbox (handled and acked already: a repeated dispatch).
# KEYS: inbox body, handling count   ARGV: id, retention_s
# Returns the runs started so far including this one, or 0 when not in the inbox.
START_HANDLING = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local runs = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return runs
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
