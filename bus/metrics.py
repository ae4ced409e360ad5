"""Prometheus metrics (names are part of the public contract; see deploy/ for dashboards).

Counters and the latency histogram count what happens in this process; the gauges of
queue, dead-letter, inbox and subscription depth are read from the broker and Redis by
`bus.health.refresh_gauges` (in the HTTP server's background check, and on
`bus.queue_stats` in workers).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from bus.breaker import BREAKERS, STATE_VALUE

logger = logging.getLogger(__name__)

MESSAGES = Counter(
    "message_bus_messages",
    "Messages by type, priority and status reached",
    ["type", "priority", "status"],
)
DURATION = Histogram(
    "message_bus_message_duration_seconds",
    "Send to delivered-in-inbox latency",
    ["type"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
ERRORS = Counter("message_bus_errors", "Errors by kind", ["kind"])
CIRCUIT = Gauge("message_bus_circuit_state", "0 closed, 1 half-open, 2 open", ["target"])
QUEUE_DEPTH = Gauge("message_bus_queue_depth", "Messages waiting in a queue", ["queue"])
DEAD_LETTERS = Gauge("message_bus_dead_letters", "Messages in bus.dead_letter")
INBOX_DEPTH = Gauge("message_bus_inbox_depth", "Messages in an agent's inbox", ["agent"])
INBOX_SERIES = 20  # agents with a series of their own (the deepest inboxes)
SUBSCRIPTIONS = Gauge("message_bus_subscriptions", "Topic subscriptions")


def count(message: dict[str, Any], status: str) -> None:
    meta = message.get("metadata") or {}
    _messages(str(message.get("type", "event")), str(meta.get("priority", "normal")), status).inc()


def observe_latency(message_type: str, seconds: float) -> None:
    _duration(message_type).observe(max(seconds, 0.0))


# labels() takes a lock and rebuilds its key on every call: the per-message series are
# looked up once.
@functools.lru_cache(maxsize=1024)
def _messages(type_: str, priority: str, status: str) -> Any:
    return MESSAGES.labels(type_, priority, status)


@functools.lru_cache(maxsize=64)
def _duration(message_type: str) -> Any:
    return DURATION.labels(message_type)


def _on_circuit(target: str, state: str) -> None:
    CIRCUIT.labels(target).set(STATE_VALUE[state])


# Every documented series exists from the start, so dashboards and alerts see zeros, not gaps.
for _type in (
    "request",
    "response",
    "event",
    "command",
    "query",
    "notification",
    "broadcast",
    "error",
):
    DURATION.labels(_type)
for _kind in (
    "unavailable",
    "bad_signature",
    "expired",
    "retries_exhausted",
    "handler_failed",
    "malformed",
    "stale",
    "bad_timestamp",
    "rate_limited",
    "forbidden",
):
    ERRORS.labels(_kind)

for _breaker in BREAKERS.values():
    CIRCUIT.labels(_breaker.target).set(0)
    _breaker.listeners.append(_on_circuit)
