"""A stop signal wakes the worker's event loop: its poll returns at once instead of
sleeping until the next timer, so the warm shutdown starts when the signal arrives."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

from kombu.asynchronous import Hub

from workers.wakeup import WakeOnSignal, forget_after_fork


def test_a_signal_makes_the_hubs_poll_return_with_the_wakeup_readable():
    hub = Hub()
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    try:
        WakeOnSignal(SimpleNamespace()).start(SimpleNamespace(hub=hub))
        (reader,) = hub.readers
        assert hub.poller.poll(0) == []  # positive control: nothing to read before
        os.kill(os.getpid(), signal.SIGUSR1)
        events = hub.poller.poll(30)
        assert received == [signal.SIGUSR1]
        assert [fd for fd, _ in events] == [reader]
    finally:
        forget_after_fork()
        signal.signal(signal.SIGUSR1, previous)
        hub.close()


def test_a_consumer_without_a_hub_is_left_alone():
    WakeOnSignal(SimpleNamespace()).start(SimpleNamespace(hub=None))
    assert signal.set_wakeup_fd(-1) == -1  # nothing was installed
