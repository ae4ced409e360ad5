"""The caller's unread count, carried by every tool result and every channel bell.

Unread = messages in the inbox not handed out by a read: the ready ones, and leased ones
whose lease has run out (the next read hands them out again). One Redis round trip.
"""

from __future__ import annotations

from bus.client import MessageBus
from bus.redis_conn import redis_errors


def count_unread(bus: MessageBus, agent: str) -> int:
    runtime = bus.runtime
    inbox = runtime.keys.inbox(agent)
    with redis_errors("count unread messages"):
        pipe = runtime.redis.pipeline(transaction=False)
        pipe.zcard(inbox.ready)
        pipe.zcount(inbox.leased, "-inf", runtime.clock.now_ms())
        ready, expired = pipe.execute()
    return int(ready) + int(expired)
