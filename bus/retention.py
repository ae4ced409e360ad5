"""Retention: history past `history_retention`, unread inbox messages past their ttl.

Times are Redis's (bus.clock). An inbox entry the bus cannot read is left for its reader,
who is shown it flagged (bus.reader): the purge never guesses at what it holds.
"""

from __future__ import annotations

import logging
from typing import Any

from bus.envelope import Envelope
from bus.errors import PermanentFailure

logger = logging.getLogger(__name__)


def purge_expired(runtime: Any, scan_limit: int = 10_000) -> dict[str, int]:
    store = runtime.store
    now_ms = runtime.clock.now_ms()
    cutoff = now_ms - runtime.settings.history_retention * 1000
    trimmed = expired = 0
    for agent in store.agent_ids():
        trimmed += store.trim_history_before(agent, cutoff)
        stale = []
        for message_id, wire in store.peek_inbox_items(agent, scan_limit):
            try:
                expires_ms = Envelope.parse(wire).expires_ms
            except PermanentFailure:
                continue
            if expires_ms is not None and now_ms > expires_ms:
                stale.append(message_id)
        if stale:
            store.ack(agent, stale)
            store.advance_status(stale, "expired", force=True, reason="expired")
            expired += len(stale)
    return {"history_trimmed": trimmed, "inbox_expired": expired}
