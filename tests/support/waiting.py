"""Waiting for a condition with a deadline (tests never sleep a fixed time)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

POLL_INTERVAL = 0.05


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 15.0,
    what: str = "condition",
    interval: float = 0.02,
) -> Any:
    """Polls until `condition()` is truthy; fails with what was last seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def settled(condition: Callable[[], Any], timeout: float) -> Any:
    """Polls until `condition()` is truthy or `timeout` passes; returns its last value, for
    a test that then asserts with its own account of what it found."""
    deadline = time.monotonic() + timeout
    while not (last := condition()) and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
    return last


def holds_for(condition: Callable[[], Any], seconds: float, what: str) -> None:
    """Asserts `condition()` stays truthy for `seconds` (for things that must NOT happen:
    a redelivery, a second copy); polls so it fails as soon as it breaks."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if not value:
            pytest.fail(f"{what} stopped holding; last value: {value!r}")
        time.sleep(POLL_INTERVAL)
