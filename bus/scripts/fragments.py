"""Lua shared by several scripts: the status ranks, Redis's clock, history trimming and
the token bucket. Each is pasted in front of the scripts that use it."""

from __future__ import annotations

# Status ranks: a status only moves forward, except retrying -> retrying (attempt count)
# and an explicit force (dead-letter replay re-queues a dead message).
STATUS_RANK_LUA = """
local rank = {queued=1, retrying=2, delivered=3, dead=3, expired=3, read=4, acked=5}
"""

# One recipient's ack, counted on the message's status by who acked (a set per message,
# so an ack run twice, its reply lost, counts once): the status becomes `acked` once every
# agent it was delivered to has acked. Until then it keeps its status (`delivered`, `read`)
# with the count in `acks` (of `recipients`): one recipient's ack is not the others'.
# Scripts take ACK_COUNT_LUA (below), which brings the status ranks and the clock with it.
_COUNT_ACK = """
local function count_ack(status_key, delivered_key, acked_key, agent, retention)
  local current = redis.call('HGET', status_key, 'status')
  if not current then return end  -- past retention, or never sent through the bus
  if redis.call('EXISTS', acked_key) == 0 then
    -- acks counted before acks were kept by agent (or a set that lapsed before its status):
    -- one stand-in each, so the count goes on from where it was
    for n = 1, tonumber(redis.call('HGET', status_key, 'acks') or '0') or 0 do
      redis.call('SADD', acked_key, '#' .. n)
    end
  end
  redis.call('SADD', acked_key, agent)
  redis.call('EXPIRE', acked_key, retention)
  redis.call('EXPIRE', delivered_key, retention)  -- lives as long as the count it is read by
  local acks = redis.call('SCARD', acked_key)
  local recipients = math.max(redis.call('SCARD', delivered_key),
    tonumber(redis.call('HGET', status_key, 'recipients') or '1') or 1, 1)
  redis.call('HSET', status_key, 'acks', acks, 'updated_at', stamp)
  if acks >= recipients and (rank[current] or 0) < rank['acked'] then
    redis.call('HSET', status_key, 'status', 'acked', 'acked_at', stamp)
  end
  redis.call('EXPIRE', status_key, retention)
end
"""

# One message out of an inbox (KEYS[1..5]: ready, leased, body, meta, per-sender counts),
# its sender's share of the inbox given back; true when it was there.
TAKE_OUT_LUA = """
local function take_out(id)
  local meta = redis.call('HGET', KEYS[4], id)
  if redis.call('HDEL', KEYS[3], id) == 0 then return false end
  local from = meta and string.match(meta, '^%d+|%d+|(.+)$')
  if from and redis.call('HINCRBY', KEYS[5], from, -1) <= 0 then redis.call('HDEL', KEYS[5], from) end
  redis.call('HDEL', KEYS[4], id)
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  return true
end
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

# count_ack with what it needs: the status ranks and Redis's clock (`stamp`).
ACK_COUNT_LUA = STATUS_RANK_LUA + NOW_LUA + _COUNT_ACK

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
-- The oldest entry is looked at alone first (in a flood it is the flooder's), then chunks
-- growing to 256: each member read is a whole message, so reading 64 to evict one was most
-- of a delivery's cost.
local function oldest_from(key, sender)
  local start, size = 0, 1
  while true do
    local chunk = redis.call('ZRANGE', key, start, start + size - 1)
    if #chunk == 0 then return nil end
    for _, member in ipairs(chunk) do
      if sender_of(member) == sender then return member end
    end
    start = start + size
    size = math.min(size * 4, 256)
  end
end
local function forget(senders_key, member)
  if not senders_key then return end
  local from = sender_of(member)
  if from and redis.call('HINCRBY', senders_key, from, -1) <= 0 then
    redis.call('HDEL', senders_key, from)
  end
end
-- Per-sender count changes of one trim, written once at its end: in a flood the entry
-- added and the one evicted are the same sender's, and neither costs a write.
local function changes_of(senders_key)
  return {key = senders_key, by = {}, order = {}}
end
local function change(changes, sender, by)
  if not changes.key or not sender then return end
  if not changes.by[sender] then
    changes.by[sender] = 0
    changes.order[#changes.order + 1] = sender
  end
  changes.by[sender] = changes.by[sender] + by
end
local function write_changes(changes)
  for _, sender in ipairs(changes.order) do
    local by = changes.by[sender]
    if by ~= 0 and redis.call('HINCRBY', changes.key, sender, by) <= 0 then
      redis.call('HDEL', changes.key, sender)
    end
  end
end
-- `senders`: the senders of the entries just added, each judged in turn. Trimming only
-- lowers counts, so those over their share are found once, up front, and each leaves the
-- list when it is back to its share: the cost is evictions + senders, not their product.
local function over_share(changes, senders, share)
  local over = {}
  if not changes.key or #senders == 0 then return over end
  local counts = redis.call('HMGET', changes.key, unpack(senders))
  for i, sender in ipairs(senders) do
    local count = tonumber(counts[i] or '0') + (changes.by[sender] or 0)
    if count > share then over[#over + 1] = {sender, count} end
  end
  return over
end
-- The entry to evict: the oldest of the first sender over its share, else the oldest.
local function evict(key, over)
  while #over > 0 do
    local victim = oldest_from(key, over[1][1])
    if victim then
      redis.call('ZREM', key, victim)
      return victim
    end
    table.remove(over, 1)  -- none of its entries left to find
  end
  return redis.call('ZPOPMIN', key)[1]
end
-- `size`: the byte count with the entries just added (nil: read it); `changes`: count
-- changes not written yet (nil: none), written here.
local function trim_history(key, bytes_key, senders_key, senders, max_entries, max_bytes, share,
    size, changes)
  changes = changes or changes_of(senders_key)
  size = size or tonumber(redis.call('GET', bytes_key) or '0')
  local stored = size
  local n = redis.call('ZCARD', key)
  local over = nil
  -- The bytes bound never takes the last entry: one message larger than the bound alone
  -- stays (its size is bounded at send), and the history is not emptied for it.
  while n > 0 and (n > max_entries or (size > max_bytes and n > 1)) do
    over = over or over_share(changes, senders, share)
    local victim = evict(key, over)
    local from = sender_of(victim)
    change(changes, from, -1)
    for i, entry in ipairs(over) do
      if entry[1] == from then
        entry[2] = entry[2] - 1
        if entry[2] <= share then table.remove(over, i) end
        break
      end
    end
    size = size - #victim
    n = n - 1
  end
  write_changes(changes)
  if size < 0 or n == 0 then size = 0 end
  if size ~= stored then redis.call('SET', bytes_key, size) end
end
local function add_history(key, bytes_key, senders_key, sender, score, member, max_entries,
    max_bytes, share)
  local size, changes = nil, changes_of(senders_key)
  if redis.call('ZADD', key, score, member) == 1 then
    size = redis.call('INCRBY', bytes_key, #member)
    change(changes, sender, 1)
  end
  trim_history(key, bytes_key, senders_key, {sender}, max_entries, max_bytes, share, size,
    changes)
end
-- The byte count and the per-sender counts of a history, rebuilt from its members.
local function recount_history(key, bytes_key, senders_key)
  local size, counts = 0, {}
  for _, member in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    size = size + #member
    local from = sender_of(member)
    if from then counts[from] = (counts[from] or 0) + 1 end
  end
  redis.call('SET', bytes_key, size)
  if senders_key then
    redis.call('DEL', senders_key)
    for from, count in pairs(counts) do redis.call('HSET', senders_key, from, count) end
  end
  return size
end
-- Many entries at once: `entries` is a list of {score, member, sender}; the counts are
-- written once and the history trimmed once.
local function add_history_many(key, bytes_key, senders_key, entries, max_entries, max_bytes,
    share)
  if #entries == 0 then return end
  local added, size, per_sender, order = 0, 0, {}, {}
  for start = 1, #entries, 256 do
    local args = {}
    for i = start, math.min(start + 255, #entries) do
      local e = entries[i]
      args[#args + 1] = e[1]
      args[#args + 1] = e[2]
    end
    added = added + redis.call('ZADD', key, unpack(args))
  end
  for _, e in ipairs(entries) do
    size = size + #e[2]
    if not per_sender[e[3]] then order[#order + 1] = e[3]; per_sender[e[3]] = 0 end
    per_sender[e[3]] = per_sender[e[3]] + 1
  end
  local total
  if added == #entries then
    total = redis.call('INCRBY', bytes_key, size)
    for _, s in ipairs(order) do
      if senders_key then redis.call('HINCRBY', senders_key, s, per_sender[s]) end
    end
  else  -- some were there already (a delivery older than its record): count afresh
    total = recount_history(key, bytes_key, senders_key)
  end
  trim_history(key, bytes_key, senders_key, order, max_entries, max_bytes, share, total)
end
"""

# A token bucket: `cost` tokens from `key`, refilled at `rate`/s up to `burst`. Returns true,
# or false and the ms until there are enough. Needs NOW_LUA.
RATE_LUA = """
local function tokens_in(key, rate, burst)  -- what the bucket holds now, refilled
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(state[1]) or burst
  local ts = tonumber(state[2]) or now_ms
  return math.min(burst, tokens + math.max(0, now_ms - ts) * rate / 1000)
end
local function keep_tokens(key, tokens, rate, burst)
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', now_ms)
  redis.call('PEXPIRE', key, math.ceil(burst * 1000 / rate) + 1000)
end
local function wait_for_tokens(tokens, rate, cost)  -- ms until the bucket holds `cost`
  return math.ceil((cost - tokens) * 1000 / rate)
end
local function take_tokens(key, rate, burst, cost)
  local tokens = tokens_in(key, rate, burst)
  if tokens < cost then return false, wait_for_tokens(tokens, rate, cost) end
  keep_tokens(key, tokens - cost, rate, burst)
  return true, 0
end
"""

# The two dedup records of a message (bus.keys: dedup:key and dedup:id). While its send is
# between admission and the broker's confirm, a record is a lease: until when (ms, Redis's
# clock) and whose (the admitting call's token), so that a concurrent send with the same
# key waits for it, and only a retry after that sender died takes it over.
#   dedup:key  'final:<id>'  or 'lease:<until_ms>:<token>:<id>'
#   dedup:id   'final|<sender>' or 'lease:<until_ms>:<token>|<sender>'
# Records written before leases ('<id>', 'pending:<id>', 'pending|<sender>') read as final,
# or as a lease that has run out.
DEDUP_RECORDS_LUA = """
local function key_record(value)
  if not value then return nil end
  local until_ms, token, id = string.match(value, '^lease:(%d+):(%x*):(.*)$')
  if until_ms then return {id = id, lease = true, until_ms = tonumber(until_ms), token = token} end
  local old = string.match(value, '^pending:(.*)$')
  if old then return {id = old, lease = true, until_ms = 0, token = ''} end
  return {id = string.match(value, '^final:(.*)$') or value}
end
local function id_record(value)  -- its owner, and a record (without the id)
  if not value then return nil, nil end
  local until_ms, token, owner = string.match(value, '^lease:(%d+):(%x*)|(.+)$')
  if until_ms then return owner, {lease = true, until_ms = tonumber(until_ms), token = token} end
  local state, old_owner = string.match(value, '^(%a+)|(.+)$')
  if state == 'pending' then return old_owner, {lease = true, until_ms = 0, token = ''} end
  -- a send refused whole (REVOKE): the id is still its sender's, and no record of a message
  if state == 'revoked' then return old_owner, nil end
  if state then return old_owner, {} end
  return nil, nil
end
local function lease_value(until_ms, token)
  return 'lease:' .. string.format('%d', until_ms) .. ':' .. token
end
"""

# An inbox's admitted-not-yet-delivered messages (its `pending` zset, scored by when they
# expire), kept by sender: members are "sender|id", and the inbox's per-sender counts hold
# each sender's pending ones under "p:<sender>" beside its delivered ones, so that a
# sender's share of an inbox counts what it has on the way too. The zset has no expiry of
# its own (an expired member is pruned, and its count with it, when the inbox is next
# judged): a count must never outlive its members.
PENDING_LUA = """
local function pending_count(senders_key, sender)
  return tonumber(redis.call('HGET', senders_key, 'p:' .. sender) or '0')
end
local function pending_add(pending_key, senders_key, sender, id, expires_ms)
  if redis.call('ZADD', pending_key, expires_ms, sender .. '|' .. id) == 1 then
    redis.call('HINCRBY', senders_key, 'p:' .. sender, 1)
  end
  redis.call('PERSIST', pending_key)  -- (set by older code: it must not take counted members)
end
local function pending_less(senders_key, sender)
  if redis.call('HINCRBY', senders_key, 'p:' .. sender, -1) <= 0 then
    redis.call('HDEL', senders_key, 'p:' .. sender)
  end
end
local function pending_drop(pending_key, senders_key, sender, id)
  if redis.call('ZREM', pending_key, sender .. '|' .. id) == 1 then
    pending_less(senders_key, sender)
  else
    redis.call('ZREM', pending_key, id)  -- one admitted before they were kept by sender
  end
end
local function pending_prune(pending_key, senders_key, now_ms)
  local expired = redis.call('ZRANGEBYSCORE', pending_key, '-inf', now_ms)
  if #expired == 0 then return end
  for _, member in ipairs(expired) do
    local sender = string.match(member, '^([^|]+)|')
    if sender then pending_less(senders_key, sender) end
  end
  redis.call('ZREMRANGEBYSCORE', pending_key, '-inf', now_ms)
end
"""
