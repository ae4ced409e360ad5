"""Circuit breakers around Redis and the broker.

closed -> (N consecutive connection failures) -> open: calls fail at once for
`reset_timeout` seconds -> half_open: one trial call; success closes, failure reopens.
A trial that ends with neither (an error its caller judges as something else) gives its
place to the next call: otherwise the circuit would stay half-open, refusing every call,
for good. States are per process, visible in health and in
`message_bus_circuit_state{target}`.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from bus.errors import BusUnavailable

logger = logging.getLogger(__name__)

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
STATE_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class CircuitBreaker:
    def __init__(
        self,
        target: str,
        failure_threshold: int = 3,
        reset_timeout: float = 2.0,
        *,
        shown: str | None = None,
    ):
        self.target = target
        self.shown = shown or target  # how messages name it ("the broker")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial: object | None = None  # the half-open trial call under way, if any
        # The trial this thread or task is inside: a call it makes itself (a send inside a
        # request, a status read inside a delivery) is part of that trial, not a second one.
        self._inside: contextvars.ContextVar[object | None] = contextvars.ContextVar(
            f"inside_{target}_trial", default=None
        )
        self._lock = threading.Lock()
        self.listeners: list[Callable[[str, str], None]] = []

    @property
    def state(self) -> str:
        with self._lock:
            if self._state == OPEN and time.monotonic() - self._opened_at >= self.reset_timeout:
                return HALF_OPEN
            return self._state

    def allow(self) -> bool:
        """May a call go through now? In half-open, only one trial call at a time (a call
        let through must end with `success` or `failure`; `passage` sees to it)."""
        return self._admit() is not None

    def _admit(self) -> object | None:
        """CLOSED for a call in a closed circuit, a token of its own for the one trial
        call, None for a call refused."""
        if self._state == CLOSED:  # the common case, read without the lock (one attribute)
            return CLOSED
        with self._lock:
            if self._state == CLOSED:
                return CLOSED
            if self._state == OPEN:
                if time.monotonic() - self._opened_at < self.reset_timeout:
                    return None
                self._set(HALF_OPEN)
            if self._trial is not None:
                return CLOSED if self._inside.get() is self._trial else None
            self._trial = object()
            return self._trial

    @contextmanager
    def passage(self, action: str) -> Iterator[None]:
        """One call through the breaker: refused at once while the circuit is open (a
        BusUnavailable naming `action` and when the next try is). The caller gives its
        verdict with `success` or `failure`; a trial call that ends without one lets the
        next call be the trial."""
        admitted = self._admit()
        if admitted is None:
            raise BusUnavailable(
                f"bus unavailable: {self.shown} cannot be reached (circuit open after repeated "
                f"failures; next try in {self.retry_in():.1f}s) while trying to {action}",
                component=self.target,
            )
        inside = self._inside.set(admitted) if admitted is not CLOSED else None
        try:
            yield
        finally:
            if inside is not None:
                self._inside.reset(inside)
                with self._lock:
                    if self._trial is admitted:  # not a later trial's place
                        self._trial = None

    def success(self) -> None:
        if self._state == CLOSED and not self._failures:  # nothing to reset: skip the lock
            return
        with self._lock:
            self._failures = 0
            self._trial = None
            if self._state != CLOSED:
                self._set(CLOSED)

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._trial = None
            if self._state == HALF_OPEN or self._failures >= self.failure_threshold:
                self._opened_at = time.monotonic()
                if self._state != OPEN:
                    self._set(OPEN)

    def retry_in(self) -> float:
        return max(0.0, self.reset_timeout - (time.monotonic() - self._opened_at))

    def _set(self, state: str) -> None:
        logger.warning("circuit %s: %s -> %s", self.target, self._state, state)
        self._state = state
        for listener in self.listeners:
            listener(self.target, state)


BREAKERS = {
    "redis": CircuitBreaker("redis", shown="Redis"),
    "broker": CircuitBreaker("broker", shown="the broker"),
}


def states() -> dict[str, str]:
    return {name: breaker.state for name, breaker in BREAKERS.items()}
