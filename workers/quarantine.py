"""Handlers share their process, except a redelivered message's, which runs alone.

RabbitMQ redelivers a message when the process running it died: maybe its own handler
killed it (os._exit, a segfault in a C extension), maybe a neighbour's did. Running every
redelivered message alone means a handler that kills its process takes only its own
message down with it, so the bus's crash count (see `bus.handle`) falls on the guilty one
and an innocent neighbour is handled normally on its next delivery.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Quarantine:
    """A readers-writer lock: `shared()` for ordinary handlers, `alone()` for suspects
    (which go first once the running handlers finish, so a stream of ordinary ones cannot
    starve them)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running = 0
        self._alone = False
        self._suspects_waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._alone or self._suspects_waiting:
                self._cond.wait()
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    @contextmanager
    def alone(self) -> Iterator[None]:
        with self._cond:
            self._suspects_waiting += 1
            while self._alone or self._running:
                self._cond.wait()
            self._suspects_waiting -= 1
            self._alone = True
        try:
            yield
        finally:
            with self._cond:
                self._alone = False
                self._cond.notify_all()

    @property
    def running(self) -> int:
        """Handlers running beside each other now (0 while a suspect runs alone)."""
        return self._running

    @property
    def suspect_running(self) -> bool:
        """A suspect is running, alone."""
        return self._alone

    def enter(self, redelivered: bool) -> contextlib.AbstractContextManager[None]:
        return self.alone() if redelivered else self.shared()
