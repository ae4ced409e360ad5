"""The inbox's scripts: delivery into inboxes and histories, leased reads, acks, and
history trimmed by age (a worker agent's handler runs: bus.scripts.handling).

Each script states its KEYS/ARGV contract; keys come from bus.keys, never built here.
"""

from __future__ import annotations

from bus.scripts.fragments import (
    ACK_COUNT_LUA,
    NOW_LUA,
    PENDING_LUA,
    STATUS_RANK_LUA,
    TAKE_OUT_LUA,
    TRIM_HISTORY_LUA,
)
from bus.scripts.script import Script

# KEYS: status, delivered-set, agents, seq, reply-key, delivered-rate bucket, the status of
#       the request it answers, dedup by id, then per recipient: ready, body, meta, history, history
#       bytes, history senders, the inbox's admitted-not-yet-delivered zset, the inbox's
#       per-sender counts
# ARGV: id, wire, rank, history_limit, retention_s, attempts, reply_channel, ts_ms,
#       history_max_bytes, sender, a sender's share of a history (entries), the direct
#       recipient ('' for topic and broadcast), the admitting call's token ('' for any),
#       then per recipient: agent, inbox channel
# A message its sender took back (REVOKE's tombstone on its id: the sender was told it was
# not sent) is delivered to nobody: 0, nothing written.
# Returns how many recipients it was newly delivered to; -1, writing nothing, when a token
# is given and the message's status was not made by that admission (ADMIT found it a
# duplicate, in flight or refused it: a sender runs this right behind its ADMIT, in one
# round trip, and then delivers it as the worker would, or not at all).
# Idempotent per (message, recipient): a redelivered task does not fill an inbox twice.
# Delivering registers no agent: an agent exists once it connects (bus.keyring / READ).
# An inbox entry's meta is "score|delivery count|sender" (ACK counts the sender down).
# An answer (reply channel given) sets the requester's reply pointer only when it comes from
# the agent the request went to (its status's 'to'; any agent for a topic or broadcast
# request): mail from a third agent naming the request is ordinary mail, never the answer.
DELIVER = Script(
    STATUS_RANK_LUA
    + NOW_LUA
    + TRIM_HISTORY_LUA
    + PENDING_LUA
    + """
if ARGV[13] ~= '' and redis.call('HGET', KEYS[1], 'admission') ~= ARGV[13] then return -1 end
if string.sub(redis.call('GET', KEYS[8]) or '', 1, 8) == 'revoked|' then return 0 end
local delivered = 0
local per = 8
local n = (#KEYS - 8) / per
local sender = ARGV[10]
local admitted_seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '')  -- see ADMIT
for i = 1, n do
  local agent = ARGV[13 + 2 * i - 1]
  local base = 8 + (i - 1) * per
  if redis.call('SADD', KEYS[2], agent) == 1 then
    local seq = admitted_seq or redis.call('INCR', KEYS[4])
    local score = string.format('%d', tonumber(ARGV[3]) * 1099511627776 + seq)
    redis.call('HSET', KEYS[base + 2], ARGV[1], ARGV[2])
    redis.call('HSET', KEYS[base + 3], ARGV[1], score .. '|0|' .. sender)
    redis.call('ZADD', KEYS[base + 1], score, ARGV[1])
    redis.call('HINCRBY', KEYS[base + 8], sender, 1)
    add_history(KEYS[base + 4], KEYS[base + 5], KEYS[base + 6], sender, ARGV[8], ARGV[2],
      tonumber(ARGV[4]), tonumber(ARGV[9]), tonumber(ARGV[11]))
    redis.call('PUBLISH', ARGV[13 + 2 * i], ARGV[1])
    delivered = delivered + 1
  end
  pending_drop(KEYS[base + 7], KEYS[base + 8], sender, ARGV[1])
end
redis.call('EXPIRE', KEYS[2], ARGV[5])
if delivered > 0 then
  -- a per-second counter: its expiry is set once, by the write that made it
  if redis.call('INCRBY', KEYS[6], delivered) == delivered then redis.call('EXPIRE', KEYS[6], 120) end
end
local current = redis.call('HGET', KEYS[1], 'status')
if not current or (rank[current] or 0) < 3 then
  redis.call('HSET', KEYS[1], 'status', 'delivered', 'delivered_at', stamp,
    'updated_at', stamp, 'attempts', ARGV[6], 'recipients', redis.call('SCARD', KEYS[2]))
  redis.call('EXPIRE', KEYS[1], ARGV[5])
end
-- a delivery run again (a redelivered task, the outbox, a replay) may reach new recipients:
-- then it is not acked by all of them any more
if delivered > 0 then
  redis.call('HSET', KEYS[1], 'recipients', redis.call('SCARD', KEYS[2]))
  if redis.call('HGET', KEYS[1], 'status') == 'acked' then
    redis.call('HSET', KEYS[1], 'status', 'delivered', 'delivered_at', stamp, 'updated_at', stamp)
  end
end
-- whose it is and who may answer it, also when it was sent while Redis was down (no
-- admission wrote them)
redis.call('HSETNX', KEYS[1], 'from', sender)
if ARGV[12] ~= '' then redis.call('HSETNX', KEYS[1], 'to', ARGV[12]) end
if ARGV[7] ~= '' and delivered > 0 and redis.call('EXISTS', KEYS[7]) == 1 then
  local asked = redis.call('HGET', KEYS[7], 'to')
  if not asked or asked == sender then
    redis.call('SET', KEYS[5], ARGV[1], 'EX', ARGV[5])
    redis.call('PUBLISH', ARGV[7], ARGV[1])
  end
end
return delivered
"""
)

# Direct messages of one batch to one inbox, in one script: DELIVER's effects for each
# message, with the inbox, its history and its counts written once for all of them.
# KEYS: delivered-rate bucket, seq, ready, body, meta, history, history bytes, history
#       senders, the inbox's admitted-not-yet-delivered zset, its per-sender counts, then per
#       message: status, delivered-set, dedup by id
# ARGV: history_limit, retention_s, history_max_bytes, a sender's share of a history, agent,
#       inbox channel, then per message: id, wire, rank, ts_ms, sender, attempts
# Returns, per message, 1 if it was newly delivered and 0 if it was in the inbox already
# (or taken back by its sender: REVOKE's tombstone, as DELIVER).
DELIVER_INBOX = Script(
    STATUS_RANK_LUA
    + NOW_LUA
    + TRIM_HISTORY_LUA
    + PENDING_LUA
    + """
local n = (#KEYS - 10) / 3
local agent, retention = ARGV[5], ARGV[2]
local function arg(i, field) return ARGV[6 + (i - 1) * 6 + field] end
local function key(i, field) return KEYS[10 + (i - 1) * 3 + field] end  -- 1 status, 2 delivered
local function in_chunks(command, key, items)
  for start = 1, #items, 256 do
    redis.call(command, key, unpack(items, start, math.min(start + 255, #items)))
  end
end
local fresh, flags = 0, {}
local revoked = {}
for i = 1, n do
  revoked[i] = string.sub(redis.call('GET', key(i, 3)) or '', 1, 8) == 'revoked|'
  if revoked[i] then
    flags[i] = 0
  else
    flags[i] = redis.call('SADD', key(i, 2), agent)
    redis.call('EXPIRE', key(i, 2), retention)
  end
  fresh = fresh + flags[i]
end
if fresh > 0 then
  local body, meta, ready, history, per_sender, senders = {}, {}, {}, {}, {}, {}
  for i = 1, n do
    if flags[i] == 1 then
      -- its place in line taken at admission (ADMIT), else now
      local seq = tonumber(redis.call('HGET', key(i, 1), 'seq') or '')
        or redis.call('INCR', KEYS[2])
      local id, wire, sender = arg(i, 1), arg(i, 2), arg(i, 5)
      local score = string.format('%d', tonumber(arg(i, 3)) * 1099511627776 + seq)
      body[#body + 1] = id; body[#body + 1] = wire
      meta[#meta + 1] = id; meta[#meta + 1] = score .. '|0|' .. sender
      ready[#ready + 1] = score; ready[#ready + 1] = id
      history[#history + 1] = {arg(i, 4), wire, sender}
      if not per_sender[sender] then senders[#senders + 1] = sender; per_sender[sender] = 0 end
      per_sender[sender] = per_sender[sender] + 1
    end
  end
  in_chunks('HSET', KEYS[4], body)
  in_chunks('HSET', KEYS[5], meta)
  in_chunks('ZADD', KEYS[3], ready)
  for _, sender in ipairs(senders) do redis.call('HINCRBY', KEYS[10], sender, per_sender[sender]) end
  add_history_many(KEYS[6], KEYS[7], KEYS[8], history, tonumber(ARGV[1]), tonumber(ARGV[3]),
    tonumber(ARGV[4]))
  redis.call('PUBLISH', ARGV[6], body[#body - 1])
  if redis.call('INCRBY', KEYS[1], fresh) == fresh then redis.call('EXPIRE', KEYS[1], 120) end
end
for i = 1, n do pending_drop(KEYS[9], KEYS[10], arg(i, 5), arg(i, 1)) end
for i = 1, n do
  if not revoked[i] then
    local status = key(i, 1)
    local current = redis.call('HGET', status, 'status')
    if not current or (rank[current] or 0) < 3 then
      redis.call('HSET', status, 'status', 'delivered', 'delivered_at', stamp,
        'updated_at', stamp, 'attempts', arg(i, 6), 'recipients', redis.call('SCARD', key(i, 2)))
      redis.call('EXPIRE', status, retention)
    end
    redis.call('HSETNX', status, 'from', arg(i, 5))
    redis.call('HSETNX', status, 'to', agent)  -- each is a direct message to this inbox
  end
end
return flags
"""
)

# KEYS: ready, leased, body, meta, agents, agent's last-seen
# ARGV: lease_ms, limit, agent, bytes (leases no more once the bodies reach it; always one)
# Registers the reader (first use) and notes when it was last seen, brings expired leases
# back, then leases up to `limit`, all by Redis's clock (a reader on a host whose clock runs
# ahead must not take over others' leases). Returns a flat list: lease deadline ms, then
# id, wire, delivery count, ...
READ = Script(
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
local budget, used = tonumber(ARGV[4]), 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)) do
  if used >= budget then break end
  redis.call('ZREM', KEYS[1], id)
  local body = redis.call('HGET', KEYS[3], id)
  if body then
    used = used + #body
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

# A reader's ack: each message out of its inbox and, in the same script, its ack counted
# on its status (ACK_COUNT_LUA). An id no longer there counts nothing.
# KEYS: ready, leased, body, meta, per-sender counts, then per id: status, delivered-set,
#       acked-set
# ARGV: agent, retention_s, ids...
# Returns the ids that were in the inbox.
ACK_READ = Script(
    ACK_COUNT_LUA
    + TAKE_OUT_LUA
    + """
local acked = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  if take_out(id) then
    local k = 5 + (i - 3) * 3
    count_ack(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], ARGV[1], ARGV[2])
    acked[#acked + 1] = id
  end
end
return acked
"""
)

# Messages out of an inbox without counting an ack (the purge of expired mail, a purged
# dead letter). KEYS: ready, leased, body, meta, per-sender counts   ARGV: ids...
# Returns the ids that were in the inbox.
ACK = Script(
    TAKE_OUT_LUA
    + """
local acked = {}
for _, id in ipairs(ARGV) do
  if take_out(id) then acked[#acked + 1] = id end
end
return acked
"""
)

# History past its retention, with its byte count (and its per-sender counts) kept.
# KEYS: history, history bytes[, history senders]   ARGV: cutoff score (ms).
# Returns how many were removed.
TRIM_HISTORY_BEFORE = Script(
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

# One message's wire out of an inbox, acked and its ack counted on its status in the same
# script (a requester taking its response; a worker agent done with a message: an ack that
# took nothing out counts nothing). KEYS: ACK's, then the message's status, delivered-set,
# acked-set   ARGV: id, retention_s, the sender it must be from ('' for any), agent. Returns the wire, or false when it
# was not there or is from another sender: then nothing is written (the status of a message
# not in this inbox is not this reader's to move).
TAKE = Script(
    ACK_COUNT_LUA
    + TAKE_OUT_LUA
    + """
local id = ARGV[1]
local wire = redis.call('HGET', KEYS[3], id)
if not wire then return false end
local meta = redis.call('HGET', KEYS[4], id)
local from = meta and string.match(meta, '^%d+|%d+|(.+)$')
if ARGV[3] ~= '' and from ~= ARGV[3] then return false end
take_out(id)
count_ack(KEYS[6], KEYS[7], KEYS[8], ARGV[4], ARGV[2])
return wire
"""
)
