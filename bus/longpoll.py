"""The one long-poll: look, and until something is there or the deadline passes, wait for
a wake-up and look again.

The caller subscribes to its wake-ups (a Redis pub/sub channel, the MCP server's shared
event listener) *before* the first look, so nothing that arrives between a look and the
wait slips by; a wake-up is only a hint to look again (it may be for something else, or
lost), which is why every wait is also bounded by `step`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

STEP = 5.0  # longest wait between two looks, wake-up or not


def poll(
    look: Callable[[], T],
    wait: Callable[[float], Any],
    timeout: float,
    step: float = STEP,
    *,
    look_first: bool = True,
) -> T:
    """`look()` until it is truthy or `timeout` seconds have passed; returns its last value.
    `look_first=False`: as for `apoll`."""
    deadline = time.monotonic() + timeout
    if not look_first:
        wait(min(timeout, step))
    while True:
        found = look()
        remaining = deadline - time.monotonic()
        if found or remaining <= 0:
            return found
        wait(min(remaining, step))


async def apoll(
    look: Callable[[], Awaitable[T]],
    wait: Callable[[float], Awaitable[Any]],
    timeout: float,
    step: float = STEP,
    *,
    look_first: bool = True,
) -> T:
    """`poll` for coroutines: no thread is held while waiting. `look_first=False`: the
    first look comes after the first wait, for a caller watching wake-ups since before it
    caused what it waits for (a request's answer cannot precede the request)."""
    deadline = time.monotonic() + timeout
    if not look_first:
        await wait(min(timeout, step))
    while True:
        found = await look()
        remaining = deadline - time.monotonic()
        if found or remaining <= 0:
            return found
        await wait(min(remaining, step))
