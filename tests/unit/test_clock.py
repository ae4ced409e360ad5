"""The bus's clock believes a measurement of Redis's time only from a quick round trip: a
slow one (Redis busy, the host starved) could be off by half its length."""

from __future__ import annotations

import time

from bus.clock import MAX_TRUSTED_ROUND_TRIP, Clock


class RedisTime:
    """Redis's TIME as a clock `ahead` of this host's, answering after `delay` seconds."""

    def __init__(self, ahead: float) -> None:
        self.ahead, self.delay = ahead, 0.0

    def __call__(self) -> tuple[int, int]:
        time.sleep(self.delay)
        now = time.time() + self.ahead
        return int(now), int((now % 1) * 1e6)


def test_a_quick_measurement_sets_the_offset():
    clock = Clock(RedisTime(5.0), refresh=0.0)
    assert abs(clock.now() - (time.time() + 5.0)) < 0.1


def test_a_slow_round_trip_is_not_believed_and_the_last_offset_stands():
    source = RedisTime(5.0)
    clock = Clock(source, refresh=0.0)
    clock.now()
    source.ahead, source.delay = -30.0, MAX_TRUSTED_ROUND_TRIP + 0.05
    measured_slowly = clock.now()  # measured, not believed: the offset of the quick one
    assert abs(measured_slowly - (time.time() + 5.0)) < MAX_TRUSTED_ROUND_TRIP + 0.2
