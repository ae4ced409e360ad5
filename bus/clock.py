"""The bus's one clock: Redis's.

Every time that decides something (a message's timestamp, its expiry, the allowed skew,
lease deadlines, retention) is Redis time, whichever host the sender, the worker or the
reader runs on, so a host whose clock runs ahead can neither take over others' leases nor
have its messages refused as from the future. Scripts read Redis's TIME themselves; Python
code uses this clock: the local clock corrected by the offset to Redis measured with TIME
(midpoint of the round trip; a trip slower than MAX_TRUSTED_ROUND_TRIP is measured again),
refreshed every `refresh` seconds. While Redis cannot be reached the last offset stands
(zero if it was never measured).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bus.errors import BusUnavailable

logger = logging.getLogger(__name__)

# A measurement whose round trip took longer than this is not believed (see Clock._sync).
MAX_TRUSTED_ROUND_TRIP = 0.2


class Clock:
    def __init__(
        self,
        read_time: Callable[[], tuple[Any, Any]],
        *,
        refresh: float = 30.0,
        warn_skew: float = 1.0,
    ) -> None:
        # read_time: Redis TIME as (seconds, microseconds), raising BusUnavailable when down.
        self._read_time = read_time
        self.refresh = refresh
        self.warn_skew = warn_skew
        self.offset = 0.0  # Redis time minus local time, seconds
        self.synced = False
        self._next_sync = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        """Seconds since the epoch, by Redis's clock."""
        local = time.time()
        if time.monotonic() >= self._next_sync:
            self._sync()
        return local + self.offset

    def now_ms(self) -> int:
        return int(self.now() * 1000)

    def utcnow(self) -> datetime:
        return datetime.fromtimestamp(self.now(), UTC)

    def _sync(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is measuring; the current offset is fine meanwhile
        try:
            if time.monotonic() < self._next_sync:
                return
            before = time.time()
            try:
                seconds, micros = self._read_time()
            except BusUnavailable as exc:
                self._next_sync = time.monotonic() + min(self.refresh, 2.0)
                logger.debug("clock not synced with Redis: %s", exc)
                return
            after = time.time()
            if after - before > MAX_TRUSTED_ROUND_TRIP:
                # A slow round trip (Redis busy, this host starved) says little about the
                # offset (it is off by up to half the trip): keep the last, measure again soon.
                self._next_sync = time.monotonic() + 1.0
                return
            offset = int(seconds) + int(micros) / 1e6 - (before + after) / 2
            if abs(offset) > self.warn_skew and abs(offset - self.offset) > self.warn_skew:
                logger.warning(
                    "this host's clock is %.1fs %s Redis's; the bus uses Redis time",
                    abs(offset),
                    "behind" if offset > 0 else "ahead of",
                )
            self.offset, self.synced = offset, True
            self._next_sync = time.monotonic() + self.refresh
        finally:
            self._lock.release()
