"""Retention: history past `history_retention`, unread inbox messages past their ttl."""

from __future__ import annotations

import time
from typing import Any

import orjson

from bus.redis_conn import redis_errors


def purge_expired(runtime: Any, scan_limit: int = 10_000) -> dict[str, int]:
    store, keys = runtime.store, runtime.keys
    cutoff = int((time.time() - runtime.settings.history_retention) * 1000)
    trimmed = expired = 0
    now = time.time()
    for agent in store.agent_ids():
        with redis_errors("trim history"):
            trimmed += int(store.redis.zremrangebyscore(keys.history(agent), "-inf", cutoff))
        stale = []
        for message_id, wire in store.peek_inbox_items(agent, scan_limit):
            data = orjson.loads(wire)
            ttl = (data.get("metadata") or {}).get("ttl")
            if ttl is None:
                continue
            sent = _ts(data.get("timestamp"))
            if sent is not None and now > sent + float(ttl):
                stale.append(message_id)
        if stale:
            store.ack(agent, stale)
            store.advance_status(stale, "expired", force=True, reason="expired")
            expired += len(stale)
    return {"history_trimmed": trimmed, "inbox_expired": expired}


def _ts(value: Any) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
