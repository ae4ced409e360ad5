"""A worker agent's handler runs on the messages of its inbox: a run started, a message
that died buried (out of the inbox, a marker kept), and a replay putting it back.

Each script states its KEYS/ARGV contract; keys come from bus.keys, never built here.
"""

from __future__ import annotations

from bus.scripts.fragments import (
    ACK_COUNT_LUA,
    NOW_LUA,
    PENDING_LUA,
    TAKE_OUT_LUA,
)
from bus.scripts.script import Script

# A worker agent starting its handler on a message, unless the message is no longer in
# the inbox (handled and acked already: a repeated dispatch) or was buried as a dead letter
# (its task came back after BURY, its process killed before the reject). Counts the cycle's
# first start and every start of a redelivered task (its last run's process died before
# the ack): a second dispatch of the message (a redelivered `bus.deliver`, the outbox's
# resend) is a fresh task, runs beside the first, and is no crash.
# KEYS: inbox body, handling count, buried marker   ARGV: id, retention_s, redelivered 1|0
# Returns 1 + the redelivered starts so far, 0 when not in the inbox, -1 when buried.
START_HANDLING = Script(
    """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
  return 0
end
local runs = tonumber(redis.call('GET', KEYS[2]) or '0')
if runs == 0 or ARGV[3] == '1' then runs = redis.call('INCR', KEYS[2]) end
redis.call('EXPIRE', KEYS[2], ARGV[2])
return runs
"""
)

# A worker agent's message that died, out of its inbox (its place, and its sender's share
# of that inbox, given back: failing requests must not fill the inbox for good), with a
# marker a replay consumes to put it back (REVIVE). Only the very text the caller read:
# It is off the outbox's list too (bus.outbox): it reached its inbox, and a resend must not
# dispatch its handler again.
# The marker is "digest|reason": why it died in this agent's hands (a fan-out's status is
# shared, and another recipient's read or death overwrites it).
# KEYS: ready, leased, body, meta, per-sender counts, buried marker, unconfirmed,
#       unconfirmed wires
# ARGV: id, sha1 of the stored wire, the message's digest (bus.envelope.message_digest),
#       retention_s, the reason it died
# Returns 1 when buried, 0 when the inbox no longer holds that text.
BURY = Script(
    TAKE_OUT_LUA
    + """
local id = ARGV[1]
local stored = redis.call('HGET', KEYS[3], id)
if not stored or redis.sha1hex(stored) ~= ARGV[2] then return 0 end
take_out(id)
redis.call('SET', KEYS[6], ARGV[3] .. '|' .. ARGV[5], 'EX', ARGV[4])
redis.call('ZREM', KEYS[7], id)
redis.call('HDEL', KEYS[8], id)
return 1
"""
)

# A replay of a worker agent's dead letter readying its message: a new cycle of handler
# runs, and the status `queued` (with the replay's count) in the same step, so that a second
# copy of the letter (a leftover, a redelivered task's, a forgery) finds it in flight:
# - in the inbox still (it died while Redis was away, or before burial existed): only when
#   its status says it is dead (or has lapsed), or was written by another agent's run (a
#   fan-out's status is shared: `run_of` names whose run wrote it), and only that very text;
# - buried: the marker is consumed here, and the message put back into the inbox under the
#   inbox's cap and its sender's share like any new mail (a refusal keeps the marker and
#   gives it another retention period);
# - anything else (never buried, replayed already, purged, past retention, another content
#   naming the id): nothing is put back and nothing will run.
# A copy older than this agent's latest replay of the message (its letter's replay count
# not above the one readied last, kept per agent: a fan-out's status is shared) is stale.
# Readied, it is off the outbox's list (a resend would dispatch a second run).
# KEYS: ready, body, meta, pending, per-sender counts, buried marker, handling count, seq,
#       status, replays readied (per agent), unconfirmed, unconfirmed wires
# ARGV: id, the dead letter's wire, its digest, rank, sender, inbox_cap, sender share,
#       retention_s, replays, sha1 of the inbox's text for it ('' when none was seen), agent
# Returns 'in_inbox', 'revived', 'in_flight', 'stale', 'gone', or {'inbox_full', depth} /
# {'share_full', held}.
REOPEN = Script(
    NOW_LUA
    + PENDING_LUA
    + """
local id = ARGV[1]
if tonumber(redis.call('GET', KEYS[10]) or '0') >= tonumber(ARGV[9]) then return 'stale' end
local function reopened()
  redis.call('SET', KEYS[10], ARGV[9], 'EX', ARGV[8])
  redis.call('ZREM', KEYS[11], id)
  redis.call('HDEL', KEYS[12], id)
  redis.call('DEL', KEYS[7])
  redis.call('HSET', KEYS[9], 'status', 'queued', 'queued_at', stamp, 'updated_at', stamp,
    'replays', ARGV[9], 'reason', '', 'error', '', 'run_of', ARGV[11])
  redis.call('EXPIRE', KEYS[9], ARGV[8])
end
local stored = redis.call('HGET', KEYS[2], id)
if stored then
  if ARGV[10] == '' or redis.sha1hex(stored) ~= ARGV[10] then return 'gone' end
  local status = redis.call('HGET', KEYS[9], 'status')
  if status and status ~= 'dead' and status ~= 'expired' then
    -- a live status speaks for this agent's run unless another agent's run wrote it
    local run_of = redis.call('HGET', KEYS[9], 'run_of')
    if not run_of or run_of == ARGV[11] then return 'in_flight' end
  end
  reopened()
  return 'in_inbox'
end
if string.sub(redis.call('GET', KEYS[6]) or '', 1, #ARGV[3]) ~= ARGV[3] then return 'gone' end
redis.call('EXPIRE', KEYS[6], ARGV[8])
pending_prune(KEYS[4], KEYS[5], now_ms)  -- admitted mail whose time ran out
local depth = redis.call('HLEN', KEYS[2]) + redis.call('ZCARD', KEYS[4])
if depth >= tonumber(ARGV[6]) then return {'inbox_full', depth} end
local held = tonumber(redis.call('HGET', KEYS[5], ARGV[5]) or '0') + pending_count(KEYS[5], ARGV[5])
if held >= tonumber(ARGV[7]) then return {'share_full', held} end
local seq = redis.call('INCR', KEYS[8])
local score = string.format('%d', tonumber(ARGV[4]) * 1099511627776 + seq)
redis.call('HSET', KEYS[2], id, ARGV[2])
redis.call('HSET', KEYS[3], id, score .. '|0|' .. ARGV[5])
redis.call('ZADD', KEYS[1], score, id)
redis.call('HINCRBY', KEYS[5], ARGV[5], 1)
redis.call('DEL', KEYS[6])
reopened()
return 'revived'
"""
)

# A purged dead letter's marker, when it is that message's. KEYS: marker  ARGV: digest
FORGET_BURIED = Script(
    """
if string.sub(redis.call('GET', KEYS[1]) or '', 1, #ARGV[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
)

# A handler run that answered a message another run of it buried meanwhile (a second
# dispatch beside the first: one failed, the other went through): the message was handled
# after all. Its marker goes (a replay of the dead letter then runs nothing: "handled
# since"), the death is void, and this agent's ack counts.
# KEYS: buried marker, status, delivered-set, acked-set   ARGV: digest, agent, retention_s
# Returns 1 when it found that message buried, 0 otherwise.
HANDLED_AFTER_BURIAL = Script(
    ACK_COUNT_LUA
    + """
if string.sub(redis.call('GET', KEYS[1]) or '', 1, #ARGV[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if redis.call('HGET', KEYS[2], 'status') == 'dead' then
  redis.call('HSET', KEYS[2], 'status', 'delivered', 'reason', '', 'error', '')
end
count_ack(KEYS[2], KEYS[3], KEYS[4], ARGV[2], ARGV[3])
return 1
"""
)
