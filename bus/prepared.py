"""A message ready to admit and publish, and how a send's messages group into tasks."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from bus.admission import AcceptRecord
from bus.delivery_calls import Delivery
from bus.envelope import Envelope
from bus.schema import Message

# RabbitMQ's default max_message_size (128 MiB), less room for a task's headers: a message
# whose task would pass it is refused at the door instead of by the broker.
MAX_TASK_MESSAGE_BYTES = 127 * 1024 * 1024


class Prepared:
    """A validated, signed message ready to admit and publish; `task_bytes`: what it takes
    in a task's JSON."""

    __slots__ = ("message", "wire", "record", "task_bytes", "ahead", "delivered_here", "degraded")

    def __init__(self, message: Message, wire: dict[str, Any], record: AcceptRecord) -> None:
        self.message = message
        self.wire = wire
        self.record = record
        self.task_bytes = task_bytes(record.wire)
        # Delivered by the DELIVER that rode behind its admission: what dispatching it
        # needs (Deliverer.delivered_ahead), or None.
        self.ahead: tuple[Envelope, Delivery, int] | None = None
        # This process may have put it in its recipient's inbox (an undo takes it out).
        self.delivered_here = False
        # Sent without an admission (Redis failed it): only the worker delivers it.
        self.degraded = False


def task_bytes(wire: str) -> int:
    """The bytes `wire` takes as a string inside a task's JSON: Celery's JSON escapes quotes
    and backslashes, and writes every non-ASCII character as \\uXXXX (12 bytes for one
    outside the BMP, 4 bytes of UTF-8)."""
    if wire.isascii():
        return len(wire) + 2 + wire.count('"') + wire.count("\\")
    return len(json.dumps(wire))


def task_groups(prepared: list[Prepared], batch: bool, max_bytes: int) -> list[list[Prepared]]:
    """One task per message; for a batch one per priority, split where its messages would
    pass `max_bytes` together (RabbitMQ refuses a message over its max_message_size)."""
    if not batch:
        return [[p] for p in prepared]
    by_queue: dict[str, list[list[Prepared]]] = defaultdict(lambda: [[]])
    size: dict[str, int] = defaultdict(int)
    for p in prepared:
        queue, length = p.message.priority.queue, p.task_bytes
        groups = by_queue[queue]
        if groups[-1] and size[queue] + length > max_bytes:
            groups.append([])
            size[queue] = 0
        groups[-1].append(p)
        size[queue] += length
    return [group for groups in by_queue.values() for group in groups]
