"""Handlers share their process, except a redelivered message's, which runs alone.

RabbitMQ redelivers a message when the process running it died: maybe its own handler
killed it (os._exit, a segfault in a C extension), maybe a neighbour's did. Running every
redelivered message alone means a handler that kills its process takes only its own
message down with it, so the bus's crash count (see `bus.handle`) falls on the guilty one
and an innocent neighbour is handled normally on its next delivery.

RabbitMQ also redelivers when only the connection was lost: the process lives, and the
message's first run may still be going on in it. That redelivery is no suspect (nothing
died): it waits for that one run, not for every handler of the process, and is not
counted as a crash.
"""

from __future__ import annotations

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
        self._ids: dict[str, int] = {}  # messages whose handler runs here now (runs of each)

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

    @contextmanager
    def enter(self, redelivered: bool, message_id: str = "") -> Iterator[bool]:
        """Runs a handler on `message_id`; yields whether it is a suspect (redelivered, and
        no run of it going on in this process), which runs alone."""
        with self._cond:
            here = redelivered and message_id in self._ids
            while here and message_id in self._ids:  # its first run, here: wait for that one
                self._cond.wait()
        suspect = redelivered and not here
        with self.alone() if suspect else self.shared():
            with self._cond:
                self._ids[message_id] = self._ids.get(message_id, 0) + 1
            try:
                yield suspect
            finally:
                with self._cond:
                    if self._ids[message_id] <= 1:
                        del self._ids[message_id]
                    else:
                        self._ids[message_id] -= 1
                    self._cond.notify_all()
