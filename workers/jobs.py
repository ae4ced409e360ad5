"""Scheduled jobs run by Celery beat (`msgbus beat`), executed by the delivery workers."""

from __future__ import annotations

import logging
from typing import Any

from bus.deadletters import DeadLetterQueue
from bus.errors import is_transient_reason
from bus.health import refresh_gauges
from bus.retention import purge_expired as purge
from bus.schema import DeadLetter
from workers.app import app, runtime

logger = logging.getLogger(__name__)


@app.task(name="bus.replay_dead_letters")
def replay_dead_letters() -> list[str]:
    """Replays dead letters whose cause was transient (retries exhausted, bus unavailable,
    a failing handler), at most `max_dead_letter_replays` times each; never bad signatures,
    expired, malformed or denied messages."""
    limit = runtime.settings.max_dead_letter_replays

    def transient(letter: DeadLetter) -> bool:
        return is_transient_reason(letter.reason) and letter.replays < limit

    replayed = DeadLetterQueue(runtime).replay(None, select=transient)
    if replayed:
        logger.info("replayed %d dead letters", len(replayed))
    return replayed


@app.task(name="bus.purge_expired")
def purge_expired() -> dict[str, int]:
    """Trims history past its retention and removes unread inbox messages past their ttl
    (status and dedup keys expire by themselves in Redis)."""
    return purge(runtime)


@app.task(name="bus.queue_stats")
def queue_stats() -> dict[str, Any]:
    """Queue, dead-letter, inbox and subscription depths into the worker's metrics."""
    refresh_gauges(runtime)
    return {"ok": True}


def beat_schedule() -> dict[str, Any]:
    s = runtime.settings
    return {
        "replay-dead-letters": {
            "task": "bus.replay_dead_letters",
            "schedule": s.replay_interval,
            "options": {"queue": "bus.low"},
        },
        "purge-expired": {
            "task": "bus.purge_expired",
            "schedule": s.purge_interval,
            "options": {"queue": "bus.low"},
        },
        "queue-stats": {
            "task": "bus.queue_stats",
            "schedule": s.stats_interval,
            "options": {"queue": "bus.low", "expires": s.stats_interval},
        },
    }
