"""The send side's scripts: admission in one call, its undo, and its commit once the
broker has confirmed.

Each script states its KEYS/ARGV contract; keys come from bus.keys, never built here.
"""

from __future__ import annotations

from bus.scripts.fragments import (
    DEDUP_RECORDS_LUA,
    NOW_LUA,
    PENDING_LUA,
    RATE_LUA,
    TRIM_HISTORY_LUA,
)
from bus.scripts.script import Script

# The send side's one call: refusals first (an id another sender owns, mail for an agent
# that has never connected past the sender's allowance, a full inbox or the sender's share
# of it, the rate limit), then dedup, status `queued`, the sender's history and audit: all
# of it or none of it.
# KEYS: agents, sent-rate bucket, audit stream, ghosts (scripts.ghosts), unconfirmed, their
#       wires (bus.outbox), the inboxes' sequence, then per message:
#       dedup (by the sender's dedup key), dedup (by id), status, sender history, its byte
#       count, the sender's set of not-yet-seen recipients, then for each recipient the
#       sender resolved (one for a direct message): its inbox body, the inbox's admitted-
#       not-yet-delivered zset, and its per-sender counts; then the rate-limit buckets
# ARGV: dedup_window_s, retention_s, history_limit, audit_maxlen, the buckets' limits (JSON
#       list of [rate per s, burst], one per bucket key), sender share of an inbox
#       (messages), history_max_bytes, inbox_cap, unseen_cap, message count, lease_ms, then
#       per message: id, queue, sender, wire, ts_ms, expires_at_ms ('' if none), audit
#       entry (JSON list of field, value...), pending ('1'/'0'), direct recipient ('' for
#       topic and broadcast), recipient declared ('1' when the ACL names it), the call's
#       token (hex), its bucket (1-based, 0: no limit), the number of recipients n, then
#       their n agent ids
# Returns {'ok', d1, ..., dn}: di is '' when message i was accepted, the id it duplicates
# (the same sender's dedup key or id), 'in-flight:<ms>:<id>' or 'retry-as:<id>' (see
# below). Or, writing nothing: {'rate_limited', ms to wait, bucket}, {'too_costly', cost,
# bucket} (more than the bucket ever holds), {'conflict', i} (message i brings
# an id another sender's message has), {'unknown_agent', i, agent} (never connected, and the
# sender already has mail waiting for unseen_cap such agents), {'inbox_full', i, agent,
# depth} or {'share_full', i, agent, held}.
# An inbox counts what it holds and what was admitted for it and not yet delivered (those
# entries expire with the message, or after the dedup window), and this call's own messages.
# The cost of a message is its recipients (at least 1): a fan-out is charged per recipient,
# to its own sender's bucket (a batch may carry several senders).
# Run again with the same arguments (a reply lost with its connection: the runner sends the
# call once more), it answers as the first run did for what that run admitted, writing
# nothing twice: a message whose status this call's token made is accepted as it was.
# Dedup keys belong to their sender (KEYS hold the sender); the records are described in
# fragments.DEDUP_RECORDS_LUA.
# Records of messages a client may send again (its own id or dedup key) are written as a
# lease of lease_ms and made final (COMMIT) once the broker has confirmed. A send that
# meets another's live lease is told 'in-flight' (nothing written, nothing charged): it
# waits and asks again, and is that message's duplicate once it is final. A lease that ran
# out means its sender died between admission and confirm: the broker may or may not have
# that message. The first send to meet it takes it over ('retry-as:<id>': the lease becomes
# its own, so every other send keeps waiting) and is admitted again under that id with its
# token, charged and bounded like any new message; if both copies reach a worker, delivery
# is idempotent per id, so the message is neither lost nor delivered twice.
# Every message accepted is listed as unconfirmed, with its wire, until its sender's COMMIT
# (after the broker's confirm): one whose sender died in between is published by
# bus.outbox once its lease has passed.
ADMIT = Script(
    NOW_LUA
    + TRIM_HISTORY_LUA
    + RATE_LUA
    + DEDUP_RECORDS_LUA
    + PENDING_LUA
    + """
local lease_ms = tonumber(ARGV[11])
local messages = {}
local k, a = 7, 11
for i = 1, tonumber(ARGV[10]) do
  local m = {k = k, a = a, n = tonumber(ARGV[a + 13]), bucket = tonumber(ARGV[a + 12])}
  m.id, m.sender, m.to, m.token = ARGV[a + 1], ARGV[a + 3], ARGV[a + 9], ARGV[a + 11]
  m.expires = ARGV[a + 6] ~= '' and tonumber(ARGV[a + 6]) or now_ms + tonumber(ARGV[1]) * 1000
  messages[i] = m
  k = k + 6 + 3 * m.n
  a = a + 13 + m.n
end
local limits = cjson.decode(ARGV[5])
local buckets = k  -- the buckets' keys follow the messages': bucket j is KEYS[buckets + j]
-- 1. What each message is: a repeat of an earlier one (also of one earlier in this very
-- call: the same sender's dedup key or id twice in a batch), one whose earlier send is in
-- flight, or new (also: this caller's own takeover of a lease that ran out).
local costs = {}
local claimed, claimed_by = {}, {}
for i, m in ipairs(messages) do
  local made = redis.call('HMGET', KEYS[m.k + 3], 'admission', 'admitted_again')
  local repeat_in_call = claimed[KEYS[m.k + 1]] or claimed[KEYS[m.k + 2]]
  if not repeat_in_call and (made[1] == m.token or made[2] == m.token) then
    -- This very call run again (its reply was lost with its connection and the runner
    -- sent it once more): admitted already, so accepted, and nothing is written twice; a
    -- repeat of it later in the call is its duplicate, as in the first run.
    m.outcome, m.again = '', true
    claimed[KEYS[m.k + 1]] = m.id
    claimed[KEYS[m.k + 2]] = m.id
    claimed_by[KEYS[m.k + 2]] = m.sender
  else
  local owner, by_id = id_record(redis.call('GET', KEYS[m.k + 2]))
  -- past the dedup window the status still says whose the id is (for its retention)
  owner = owner or redis.call('HGET', KEYS[m.k + 3], 'from') or claimed_by[KEYS[m.k + 2]]
  if owner and owner ~= m.sender then return {'conflict', i} end
  local record
  local earlier = claimed[KEYS[m.k + 1]] or claimed[KEYS[m.k + 2]]
  if earlier then
    record = {id = earlier}
  else
    record = key_record(redis.call('GET', KEYS[m.k + 1]))
    if record then
      record.key = KEYS[m.k + 1]
    elseif by_id then
      record = by_id
      record.id, record.key, record.owner = m.id, KEYS[m.k + 2], owner
    elseif redis.call('EXISTS', KEYS[m.k + 3]) == 1 then
      record = {id = m.id}  -- an id is taken while its status lives, past the dedup window
    end
  end
  if record and not record.lease then
    m.outcome = record.id
  elseif record and not (record.id == m.id and record.token == m.token) then
    m.later = true  -- its outcome is known later: no audit entry yet
    -- (a live lease of this very call's token is its own takeover, seen again when the
    -- call is run again: taken over again, not waited for)
    if record.until_ms > now_ms and record.token ~= m.token then
      m.outcome = 'in-flight:' .. string.format('%d', record.until_ms - now_ms) .. ':' .. record.id
    else
      m.outcome = 'retry-as:' .. record.id
      m.takeover = record
      -- the same key again later in this call is a duplicate of this takeover
      claimed[KEYS[m.k + 1]] = record.id
      claimed[KEYS[m.k + 2]] = record.id
      claimed_by[KEYS[m.k + 2]] = m.sender
    end
  else
    m.outcome = ''
    if m.bucket > 0 then costs[m.bucket] = (costs[m.bucket] or 0) + math.max(1, m.n) end
    claimed[KEYS[m.k + 1]] = m.id
    claimed[KEYS[m.k + 2]] = m.id
    claimed_by[KEYS[m.k + 2]] = m.sender
  end
  end
end
-- 2. Bounds on what the new ones would store, counting this call's own messages too.
local unseen_new, inbox_new, share_new = {}, {}, {}
for i, m in ipairs(messages) do
  if m.outcome == '' and not m.again then
    if m.to ~= '' and ARGV[m.a + 10] ~= '1' and not redis.call('ZSCORE', KEYS[1], m.to) then
      m.unseen = true
      local set = KEYS[m.k + 6]
      if redis.call('SISMEMBER', set, m.to) == 0 and not unseen_new[set .. ' ' .. m.to] then
        local held = redis.call('SCARD', set) + (unseen_new[set] or 0)
        if held >= tonumber(ARGV[9]) then return {'unknown_agent', i, m.to} end
        unseen_new[set .. ' ' .. m.to] = true
        unseen_new[set] = (unseen_new[set] or 0) + 1
      end
    end
    for r = 1, m.n do
      local body = KEYS[m.k + 6 + 3 * r - 2]
      local pending = KEYS[m.k + 6 + 3 * r - 1]
      local senders = KEYS[m.k + 6 + 3 * r]
      local agent = ARGV[m.a + 13 + r]
      if inbox_new[body] == nil then
        pending_prune(pending, senders, now_ms)
        inbox_new[body] = redis.call('HLEN', body) + redis.call('ZCARD', pending)
      end
      if inbox_new[body] >= tonumber(ARGV[8]) then
        return {'inbox_full', i, agent, inbox_new[body]}
      end
      local mine = senders .. ' ' .. m.sender
      if share_new[mine] == nil then  -- what it has there, and what it has on the way
        share_new[mine] = tonumber(redis.call('HGET', senders, m.sender) or '0')
          + pending_count(senders, m.sender)
      end
      if agent ~= m.sender and share_new[mine] >= tonumber(ARGV[6]) then
        return {'share_full', i, agent, share_new[mine]}
      end
      inbox_new[body] = inbox_new[body] + 1
      share_new[mine] = share_new[mine] + 1
    end
  end
end
-- 3. The rate limit, charged for every recipient of the new messages.
-- Every bucket is checked before any is charged: all of it or none of it.
local left = {}
for j, limit in ipairs(limits) do
  local cost, rate, burst = costs[j], limit[1], limit[2]
  if cost then
    if cost > burst then return {'too_costly', cost, j} end
    local tokens = tokens_in(KEYS[buckets + j], rate, burst)
    if tokens < cost then return {'rate_limited', tostring(wait_for_tokens(tokens, rate, cost)), j} end
    left[j] = tokens - cost
  end
end
for j, limit in pairs(limits) do
  if left[j] then keep_tokens(KEYS[buckets + j], left[j], limit[1], limit[2]) end
end
-- 4. Record the new ones.
local out = {'ok'}
local accepted = 0
for _, m in ipairs(messages) do
  local k, a = m.k, m.a
  if m.outcome == '' and not m.again then
    accepted = accepted + 1
    if ARGV[a + 8] == '1' then
      local lease = lease_value(now_ms + lease_ms, m.token)
      redis.call('SET', KEYS[k + 1], lease .. ':' .. m.id, 'EX', ARGV[1])
      redis.call('SET', KEYS[k + 2], lease .. '|' .. m.sender, 'EX', ARGV[1])
    else
      redis.call('SET', KEYS[k + 1], 'final:' .. m.id, 'EX', ARGV[1])
      redis.call('SET', KEYS[k + 2], 'final|' .. m.sender, 'EX', ARGV[1])
    end
    -- A worker can be first when this call is retried after a publish: never move a
    -- status back.
    if redis.call('EXISTS', KEYS[k + 3]) == 0 then
      -- 'admission': which call made it (REVOKE takes back only a status it made)
      redis.call('HSET', KEYS[k + 3], 'status', 'queued', 'updated_at', stamp, 'attempts', 0,
        'admission', m.token)
    else
      -- admitted under an id whose status an earlier call made (a takeover): which call
      -- this was, so that this very call run again is known (step 1)
      redis.call('HSET', KEYS[k + 3], 'admitted_again', m.token)
    end
    redis.call('HSET', KEYS[k + 3], 'queued_at', stamp, 'queue', ARGV[a + 2], 'from', m.sender)
    -- its place in line, taken now: inboxes order a priority's messages by admission (one
    -- sender's in the order it sent them), whichever delivery task finishes first
    if redis.call('HEXISTS', KEYS[k + 3], 'seq') == 0 then
      redis.call('HSET', KEYS[k + 3], 'seq', redis.call('INCR', KEYS[7]))
    end
    -- who may answer it (scripts.DELIVER sets a requester's reply pointer by it)
    if m.to ~= '' then redis.call('HSET', KEYS[k + 3], 'to', m.to) end
    if ARGV[a + 6] ~= '' then redis.call('HSET', KEYS[k + 3], 'expires_at', ARGV[a + 6]) end
    redis.call('EXPIRE', KEYS[k + 3], ARGV[2])
    redis.call('ZADD', KEYS[1], 'NX', now_ms, m.sender)
    -- unconfirmed until its sender says the broker has it (COMMIT): if that sender dies
    -- first, bus.outbox publishes it once the lease has passed
    redis.call('ZADD', KEYS[5], now_ms + lease_ms, m.id)
    redis.call('HSET', KEYS[6], m.id, ARGV[a + 4])
    -- into the sender's history untrimmed: a send refused after this (REVOKE) must not
    -- have evicted older entries; COMMIT trims it once the broker has the message
    if redis.call('ZADD', KEYS[k + 4], ARGV[a + 5], ARGV[a + 4]) == 1 then
      redis.call('INCRBY', KEYS[k + 5], #ARGV[a + 4])
    end
    if m.unseen then
      redis.call('SADD', KEYS[k + 6], m.to)
      redis.call('EXPIRE', KEYS[k + 6], ARGV[2])
      redis.call('ZADD', KEYS[4], now_ms, m.to)
    elseif m.to ~= '' then
      redis.call('SREM', KEYS[k + 6], m.to)  -- it has connected since: no longer unseen
    end
    for r = 1, m.n do
      pending_add(KEYS[k + 6 + 3 * r - 1], KEYS[k + 6 + 3 * r], m.sender, m.id, m.expires)
    end
  end
  if m.takeover then  -- the lease is this caller's now: every other send keeps waiting
    local t = m.takeover
    local lease = lease_value(now_ms + lease_ms, m.token)
    local value = t.owner and (lease .. '|' .. t.owner) or (lease .. ':' .. t.id)
    redis.call('SET', t.key, value, 'KEEPTTL')
  end
  out[#out + 1] = m.outcome
  local entry = cjson.decode(ARGV[a + 7])
  if #entry > 0 and not m.later and not m.again then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', unpack(entry))
  end
end
if accepted > 0 then
  if redis.call('INCRBY', KEYS[2], accepted) == accepted then redis.call('EXPIRE', KEYS[2], 120) end
end
return out
"""
)

# Undo of ADMIT when the broker refused the publish or a later step failed: nothing
# half-written. It takes back only what that call wrote: the dedup records while they are
# its lease (another send may have taken over since), the status only if that call made it
# and no other send has taken the message over since. A takeover's lease (ARGV[5] '1': the message went out under an earlier sender's id) is
# released instead (run out at once), so the next retry takes over without waiting.
# With ARGV[6] '1' it also takes back the message's delivery into its recipients' inboxes
# and histories (the sender delivered it itself, then could not publish what had to follow)
# while the message is still this call's: once another send took its lease over, that send
# owns the delivery (and may have published the task that handles it).
# A publish whose confirm never came may still have reached the broker: a message taken
# back leaves a tombstone on its id (dedup by id, `revoked|sender`, for the dedup window)
# under which no delivery puts it into an inbox (DELIVER, DELIVER_INBOX), so that "not
# sent" stays true and a retry is the only copy. One a worker has delivered or tried
# already (its status past `queued`) reached the broker after all: it is left, and goes out.
# KEYS: dedup (by key), status, sender history, dedup by id, sender history bytes,
#       unconfirmed, their wires, then the admitted-not-yet-delivered zset and the per-sender
#       counts of each recipient's inbox; with ARGV[6] '1' then the
#       delivered-set and per recipient: ready, leased, body, meta, per-sender counts,
#       history, history bytes, history senders
# ARGV: id, wire, sender, the admitting call's token, '1' for a takeover, '1' to take the
#       delivery back, dedup_window_s, then the recipients' agent ids
# Returns 1 when it took the message back; 0 when it left it because another call has
# taken it over since (a retry's takeover, or bus.outbox publishing it once this call's
# lease had passed) or a worker has it: that message goes out, and its sender should say so.
REVOKE = Script(
    DEDUP_RECORDS_LUA
    + TRIM_HISTORY_LUA
    + PENDING_LUA
    + """
local id, wire, token, takeover = ARGV[1], ARGV[2], ARGV[4], ARGV[5] == '1'
local n = #ARGV - 7
local current = redis.call('HGET', KEYS[2], 'status')
if ARGV[6] ~= '1' and current and current ~= 'queued' then return 0 end
local function ours(record) return not record.lease or record.token == token end
local owner, by_id = id_record(redis.call('GET', KEYS[4]))
-- Still this call's: no other sender's id, no other call's lease on it, and no other call
-- admitted it again since (a takeover, also bus.outbox's, marks the status it found).
local again = redis.call('HGET', KEYS[2], 'admitted_again')
local still_ours = (not owner or owner == ARGV[3]) and not (by_id and by_id.lease and
  by_id.token ~= token) and (not again or again == token)
-- admitted again by another call (a retry's takeover, bus.outbox's claim): it goes out
local taken = again and again ~= token
if not taken then
  for i = 1, n do pending_drop(KEYS[6 + 2 * i], KEYS[7 + 2 * i], ARGV[3], id) end
end
local record = key_record(redis.call('GET', KEYS[1]))
if record and record.id == id then
  if takeover then
    if record.lease and record.token == token then
      redis.call('SET', KEYS[1], lease_value(0, token) .. ':' .. id, 'KEEPTTL')
    end
  elseif ours(record) then
    redis.call('DEL', KEYS[1])
  end
end
if owner == ARGV[3] then
  if takeover then
    if by_id and by_id.lease and by_id.token == token then
      redis.call('SET', KEYS[4], lease_value(0, token) .. '|' .. owner, 'KEEPTTL')
    end
  elseif by_id and ours(by_id) then
    redis.call('DEL', KEYS[4])
  end
end
if ARGV[6] == '1' and still_ours then
  local delivered = 8 + 2 * n
  for i = 1, n do
    local base = delivered + (i - 1) * 8
    if redis.call('SREM', KEYS[delivered], ARGV[7 + i]) == 1 then
      local meta = redis.call('HGET', KEYS[base + 4], id)
      if redis.call('HDEL', KEYS[base + 3], id) == 1 then
        local from = meta and string.match(meta, '^%d+|%d+|(.+)$')
        if from and redis.call('HINCRBY', KEYS[base + 5], from, -1) <= 0 then
          redis.call('HDEL', KEYS[base + 5], from)
        end
        redis.call('HDEL', KEYS[base + 4], id)
        redis.call('ZREM', KEYS[base + 1], id)
        redis.call('ZREM', KEYS[base + 2], id)
      end
      if redis.call('ZREM', KEYS[base + 6], wire) == 1 then
        redis.call('DECRBY', KEYS[base + 7], #wire)
        forget(KEYS[base + 8], wire)
      end
    end
  end
end
if still_ours and redis.call('HGET', KEYS[2], 'admission') == token then
  redis.call('DEL', KEYS[2])
  redis.call('SET', KEYS[4], 'revoked|' .. ARGV[3], 'EX', ARGV[7])
  -- refused whole, its sender told so: nothing left for bus.outbox to publish (a
  -- takeover's is the earlier admission's, whose status stays: bus.outbox judges it)
  redis.call('ZREM', KEYS[6], id)
  redis.call('HDEL', KEYS[7], id)
end
if not taken and redis.call('ZREM', KEYS[3], wire) == 1 then
  redis.call('DECRBY', KEYS[5], #wire)
end
if taken then return 0 end
return 1
"""
)

# The broker confirmed these messages: they are no longer unconfirmed, and their leased
# dedup records become final (whoever holds the lease now: the message is in the broker
# under that id either way). bus.outbox passes the lease end it saw: a message admitted
# again since (a takeover: a lease of its own) is left to that admission's COMMIT.
# Each sender's history is trimmed to its bounds here, not at ADMIT (see there).
# KEYS: unconfirmed, their wires, then per message: dedup (by key), dedup (by id), the
#       sender's history, its byte count
# ARGV: dedup_window_s, history_limit, history_max_bytes, then per message: id, sender, the
#       lease end seen ('' for any)
COMMIT = Script(
    DEDUP_RECORDS_LUA
    + TRIM_HISTORY_LUA
    + """
local trimmed = {}
for i = 1, (#KEYS - 2) / 4 do
  local id, sender, seen = ARGV[3 * i + 1], ARGV[3 * i + 2], ARGV[3 * i + 3]
  local by_key, by_id = KEYS[4 * i - 1], KEYS[4 * i]
  local history = KEYS[4 * i + 1]
  if not trimmed[history] then
    trimmed[history] = true
    trim_history(history, KEYS[4 * i + 2], false, {}, tonumber(ARGV[2]), tonumber(ARGV[3]), 0)
  end
  local lease_end = redis.call('ZSCORE', KEYS[1], id)
  if seen == '' or not lease_end or tonumber(lease_end) == tonumber(seen) then
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    local record = key_record(redis.call('GET', by_key))
    if record and record.lease and record.id == id then
      redis.call('SET', by_key, 'final:' .. id, 'EX', ARGV[1])
    end
    local owner, held = id_record(redis.call('GET', by_id))
    if owner == sender and held and held.lease then
      redis.call('SET', by_id, 'final|' .. sender, 'EX', ARGV[1])
    end
  end
end
return 1
"""
)
