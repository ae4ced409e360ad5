"""Linger: concurrent single sends of one process ride one delivery task per priority.

Each send is admitted on its own first (bus.admission: ACL, rate limit, dedup and bounds
refuse that caller alone, before it gets here), then hands its message to the collector
of its queue and waits. The first caller of a group leads it: it publishes the group as
soon as nothing else of its queue is being published by this process, or once the group
is full, or after `wait` seconds, whichever comes first. So a sender alone publishes at
once, as without linger, and under concurrency the messages that arrive while a publish
is in flight go together in the next one (group commit). Every caller of a group returns
only after the broker confirmed that group; when the publish fails, exactly those callers
get its error.

Order: groups are separate tasks, and a later one may be delivered first; an inbox orders
a priority's messages by their admission all the same (scripts.ADMIT takes each one's
place in line), so one thread's messages are read in the order it sent them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from bus.errors import BusUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")


class _Group(Generic[T]):
    __slots__ = ("items", "size", "done", "published", "error")

    def __init__(self) -> None:
        self.items: list[T] = []
        self.size = 0
        self.done = threading.Event()
        self.published = False
        self.error: BaseException | None = None


class _Collector(Generic[T]):
    """The open group of one queue and how many of its publishes are in flight."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.open: _Group[T] | None = None
        self.in_flight = 0


class Linger(Generic[T]):
    """`publish(items)` publishes one group (one task) and raises when the broker did not
    take it. A group closes at `max_items` items, or before an item would take its summed
    item sizes past `max_size` (an item larger than that goes alone)."""

    def __init__(
        self,
        publish: Callable[[list[T]], None],
        *,
        wait: float,
        max_items: int,
        max_size: int,
    ) -> None:
        self.publish = publish
        self.wait = wait
        self.max_items = max_items
        self.max_size = max_size
        self._lock = threading.Lock()
        self._collectors: dict[str, _Collector[T]] = {}

    def send(self, queue: str, item: T, size: int = 0) -> None:
        """Returns once the broker has confirmed the group carrying `item`; raises that
        group's publish error otherwise."""
        if _on_event_loop():
            # Waiting here would stall every coroutine of the loop: publish alone.
            self.publish([item])
            return
        collector = self._collector(queue)
        group, leads = self._join(collector, item, size)
        if leads:
            self._lead(collector, group)
        else:
            group.done.wait()
        if not group.published:
            raise _own(group.error)

    def waiting(self, queue: str) -> int:
        """Items in `queue`'s open group: joined, not yet taken by a publish."""
        with self._lock:
            collector = self._collectors.get(queue)
        if collector is None:
            return 0
        with collector.cond:
            return len(collector.open.items) if collector.open else 0

    def _collector(self, queue: str) -> _Collector[T]:
        with self._lock:
            collector = self._collectors.get(queue)
            if collector is None:
                collector = self._collectors[queue] = _Collector()
            return collector

    def _join(self, c: _Collector[T], item: T, size: int) -> tuple[_Group[T], bool]:
        with c.cond:
            group = c.open
            if group is not None and group.items and group.size + size > self.max_size:
                c.open = None  # `item` would take it past its size: its leader publishes it
                c.cond.notify_all()
                group = None
            if group is None:
                group = c.open = _Group()
            group.items.append(item)
            group.size += size
            leads = len(group.items) == 1
            if len(group.items) >= self.max_items or group.size >= self.max_size:
                c.open = None  # full: the leader publishes it now
                c.cond.notify_all()
            if leads:
                deadline = time.monotonic() + self.wait
                while c.open is group and c.in_flight:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    c.cond.wait(left)
                if c.open is group:
                    c.open = None
                c.in_flight += 1
            return group, leads

    def _lead(self, c: _Collector[T], group: _Group[T]) -> None:
        try:
            self.publish(group.items)
            group.published = True
        except Exception as exc:  # noqa: BLE001 - handed to every caller of the group
            group.error = exc
        finally:
            with c.cond:
                c.in_flight -= 1
                c.cond.notify_all()
            group.done.set()


def _own(error: BaseException | None) -> BaseException:
    """The group's error as an object of this caller's own (one object raised in several
    threads would share one traceback)."""
    if error is None:  # the leading thread was interrupted before the publish ended
        return BusUnavailable(
            "the send was interrupted before the broker confirmed it; it may or may not "
            "have been queued: check its status",
            component="broker",
        )
    clone = type(error).__new__(type(error))
    clone.__dict__.update(error.__dict__)
    clone.args = error.args
    clone.__cause__ = error.__cause__
    return clone


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
