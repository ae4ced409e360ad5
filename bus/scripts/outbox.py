"""The sweep's claim on an unconfirmed message (bus.outbox), before it publishes it.

Each script states its KEYS/ARGV contract; keys come from bus.keys, never built here.
"""

from __future__ import annotations

from bus.scripts.fragments import DEDUP_RECORDS_LUA
from bus.scripts.script import Script

# The sweep takes the message over as a retry's takeover would (scripts.ADMIT): a lease of
# its own on the unconfirmed entry and on the dedup records, and the status marked as
# admitted again by it. So its sender, slow rather than dead, cannot undo it afterwards
# (scripts.REVOKE leaves a message another call has taken over), and a retry waits for
# the sweep's publish like any send in flight.
# KEYS: unconfirmed, status, dedup (by key), dedup (by id)
# ARGV: id, the lease end the sweep saw, its own lease end, its token, the sender
# Returns 1 when claimed; 0 when the message is no longer as seen (confirmed, undone or
# admitted again since): the sweep leaves it.
CLAIM = Script(
    DEDUP_RECORDS_LUA
    + """
local id, until_ms, token, sender = ARGV[1], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local seen = redis.call('ZSCORE', KEYS[1], id)
if not seen or tonumber(seen) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], until_ms, id)
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HSET', KEYS[2], 'admitted_again', token) end
local record = key_record(redis.call('GET', KEYS[3]))
if record and record.lease and record.id == id then
  redis.call('SET', KEYS[3], lease_value(until_ms, token) .. ':' .. id, 'KEEPTTL')
end
local owner, held = id_record(redis.call('GET', KEYS[4]))
if owner == sender and held and held.lease then
  redis.call('SET', KEYS[4], lease_value(until_ms, token) .. '|' .. owner, 'KEEPTTL')
end
return 1
"""
)
