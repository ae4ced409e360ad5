"""Celery beat's scheduler for the bus: RedBeat, riding out a Redis failover.

RedBeat keeps the schedule and a lock (one beat at a time) in Redis. Its own retrying
wrapper covers schedule reads and writes, not the lock: a lock extension that meets a
failover (the primary gone, Sentinel not yet naming the next) would stop beat. Here such a
tick is tried again a moment later instead; the client asks Sentinel for the new primary
on its next connection. A lock found no longer ours (it expired meanwhile and another beat
may hold it) still stops beat, as RedBeat intends.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from redbeat import RedBeatScheduler

logger = logging.getLogger(__name__)

RETRY_SECONDS = 1.0


class BusScheduler(RedBeatScheduler):
    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            return float(super().tick(*args, **kwargs))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            logger.warning("beat: Redis unavailable (%s); next tick in %.0fs", exc, RETRY_SECONDS)
            return RETRY_SECONDS
