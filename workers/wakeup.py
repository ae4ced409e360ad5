"""A stop signal wakes the worker's event loop at once.

Celery's signal handlers only set a flag that the event loop reads between polls, and the
loop polls for as long as its next timer is away: a worker with little to do went on for
5-10 s after SIGTERM or Ctrl-C before it began its warm shutdown. Python writes the
number of every signal it receives to the file given to `signal.set_wakeup_fd`; that pipe
is read by the loop, so the poll returns, the flag is read, and the shutdown starts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any

from celery import bootsteps

_pipe: tuple[int, int] | None = None


def _the_pipe() -> tuple[int, int]:
    global _pipe
    if _pipe is None:
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        _pipe = (read, write)
    return _pipe


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError, InterruptedError):
        while os.read(fd, 512):
            pass


class WakeOnSignal(bootsteps.StartStopStep):
    """Registered on every (re)start of the consumer: a reset hub forgets its readers."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def start(self, parent: Any) -> None:
        hub = parent.hub
        if hub is None or threading.current_thread() is not threading.main_thread():
            return  # no event loop of ours (an embedded worker, a pool without a hub)
        read, write = _the_pipe()
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        hub.add_reader(read, _drain, read)


def forget_after_fork() -> None:
    """A pool child keeps no wakeup file of its parent's (its signals are its own)."""
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
