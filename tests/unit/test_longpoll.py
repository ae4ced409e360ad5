"""The one long-poll (bus.longpoll): what it looks at and waits for, in which order."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from bus.longpoll import apoll, poll


def recorder(
    found_at: int,
) -> tuple[list[str], Callable[[], Awaitable[str | None]], Callable[[float], Awaitable[bool]]]:
    """A look that finds something on its `found_at`-th call, a wait that returns at once,
    and the log of what was called in which order."""
    calls: list[str] = []

    async def look() -> str | None:
        calls.append("look")
        return "found" if calls.count("look") >= found_at else None

    async def wait(seconds: float) -> bool:
        calls.append("wait")
        return True

    return calls, look, wait


def test_apoll_looks_first_by_default():
    calls, look, wait = recorder(found_at=1)
    assert asyncio.run(apoll(look, wait, 5)) == "found"
    assert calls == ["look"]


def test_apoll_with_look_first_off_waits_before_its_first_look():
    calls, look, wait = recorder(found_at=1)
    assert asyncio.run(apoll(look, wait, 5, look_first=False)) == "found"
    assert calls == ["wait", "look"]


def test_apoll_with_look_first_off_keeps_looking_until_found():
    calls, look, wait = recorder(found_at=3)
    assert asyncio.run(apoll(look, wait, 5, look_first=False)) == "found"
    assert calls == ["wait", "look", "wait", "look", "wait", "look"]


def test_apoll_bounds_each_wait_by_its_step_and_ends_at_the_deadline():
    waits: list[float] = []

    async def look() -> None:
        return None

    async def wait(seconds: float) -> bool:
        waits.append(seconds)
        await asyncio.sleep(seconds)
        return False

    assert asyncio.run(apoll(look, wait, 0.25, step=0.1, look_first=False)) is None
    assert waits and max(waits) <= 0.1 and len(waits) <= 4


def test_poll_returns_the_last_look_after_the_timeout():
    looks: list[int] = []

    def look() -> list[int]:
        looks.append(1)
        return []

    assert poll(look, lambda seconds: None, 0) == []
    assert looks == [1]


def test_poll_with_look_first_off_waits_before_its_first_look():
    calls: list[str] = []

    def look() -> str | None:
        calls.append("look")
        return "found" if calls.count("look") >= 2 else None

    def wait(seconds: float) -> None:
        calls.append("wait")

    assert poll(look, wait, 5, look_first=False) == "found"
    assert calls == ["wait", "look", "wait", "look"]
    calls.clear()
    assert poll(look, wait, 5) == "found"  # the default looks first
    assert calls == ["look", "wait", "look"]
