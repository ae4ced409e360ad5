"""Retention: history past `history_retention`, unread inbox messages past their ttl, and
the mail of agents that never connected once none has come for them within the status
retention (scripts.ghosts: their senders' allowance of such agents counts them no more).

Times are Redis's (bus.clock). An inbox entry the bus cannot read is left for its reader,
who is shown it flagged (bus.reader): the purge never guesses at what it holds.
"""

from __future__ import annotations

import logging
from typing import Any

from bus.envelope import Envelope
from bus.errors import PermanentFailure

logger = logging.getLogger(__name__)


def purge_expired(
    runtime: Any, scan_limit: int = 10_000, now_ms: int | None = None
) -> dict[str, int]:
    """`now_ms`: purge as of that time (Redis's clock by default)."""
    store = runtime.store
    now_ms = runtime.clock.now_ms() if now_ms is None else now_ms
    cutoff = now_ms - runtime.settings.history_retention * 1000
    trimmed = expired = dropped = 0
    ghosts = []
    for ghost in store.ghost_ids():
        gone = store.drop_ghost(ghost, now_ms - runtime.settings.status_retention * 1000)
        if gone is None:
            ghosts.append(ghost)
            continue
        store.advance_status(gone, "expired", force=True, reason="recipient_never_connected")
        dropped += len(gone)
    for agent in dict.fromkeys([*store.agent_ids(), *ghosts]):
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
            # Only what the purge took out: one acked meanwhile stays acked.
            gone = store.remove(agent, stale)
            store.advance_status(gone, "expired", force=True, reason="expired")
            expired += len(gone)
    return {"history_trimmed": trimmed, "inbox_expired": expired, "never_read_dropped": dropped}
