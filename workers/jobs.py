"""Scheduled jobs run by Celery beat (`msgbus beat`), executed by the delivery workers."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task

from bus.deadletters import DeadLetterQueue
from bus.errors import InboxFull, NothingToReplay, is_transient_reason
from bus.health import refresh_gauges
from bus.outbox import resend_unconfirmed as resend
from bus.retention import purge_expired as purge
from bus.schema import DeadLetter
from bus.settings import Settings
from workers.tasks import runtime_of

logger = logging.getLogger(__name__)


def replay_dead_letters(self: Task) -> list[str]:
    """Replays dead letters whose cause was transient (retries exhausted, bus unavailable,
    a failing handler), at most `max_dead_letter_replays` times each; never bad signatures,
    expired, malformed or denied messages."""
    runtime = runtime_of(self)
    limit = runtime.settings.max_dead_letter_replays

    def transient(letter: DeadLetter) -> bool:
        return is_transient_reason(letter.reason) and letter.replays < limit

    try:
        replayed = DeadLetterQueue(runtime).replay(None, select=transient)
    except (InboxFull, NothingToReplay) as exc:  # logged; those stay dead letters
        replayed = list(exc.fields.get("replayed") or [])
    if replayed:
        logger.info("replayed %d dead letters", len(replayed))
    return replayed


def purge_expired(self: Task) -> dict[str, int]:
    """Trims history past its retention and removes unread inbox messages past their ttl
    (status and dedup keys expire by themselves in Redis)."""
    return purge(runtime_of(self))


def resend_unconfirmed(self: Task) -> dict[str, int]:
    """Publishes again the messages whose sender died between admission and the broker's
    confirm (bus.outbox)."""
    return resend(runtime_of(self))


def queue_stats(self: Task) -> dict[str, Any]:
    """Queue, dead-letter, inbox and subscription depths into the worker's metrics."""
    refresh_gauges(runtime_of(self))
    return {"ok": True}


def register(app: Celery) -> None:
    """The scheduled jobs on `app` (they find their bus through it)."""
    for name, body in (
        ("bus.replay_dead_letters", replay_dead_letters),
        ("bus.purge_expired", purge_expired),
        ("bus.resend_unconfirmed", resend_unconfirmed),
        ("bus.queue_stats", queue_stats),
    ):
        app.task(name=name, bind=True, shared=False)(body)


def beat_schedule(s: Settings) -> dict[str, Any]:
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
        "resend-unconfirmed": {
            "task": "bus.resend_unconfirmed",
            "schedule": s.resend_interval,
            "options": {"queue": "bus.low", "expires": s.resend_interval},
        },
        "queue-stats": {
            "task": "bus.queue_stats",
            "schedule": s.stats_interval,
            "options": {"queue": "bus.low", "expires": s.stats_interval},
        },
    }
