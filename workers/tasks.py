"""Delivery tasks: thin adapters mapping bus outcomes onto Celery retry / reject.

- transient (BusUnavailable): retry with exponential backoff and jitter, up to max_retries;
- permanent or exhausted: ``Reject(requeue=False)`` -> RabbitMQ dead-letters it to bus.dlx.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from celery import Task
from celery.exceptions import Reject

from bus.delivery import PermanentFailure, parse_timestamp_ms
from bus.errors import BusUnavailable
from bus.topology import DELIVER_BATCH_TASK, DELIVER_TASK
from workers.app import app, runtime

logger = logging.getLogger(__name__)


def backoff(retries: int) -> float:
    """Exponential backoff with full jitter (never below half the step)."""
    s = runtime.settings
    step = min(s.retry_backoff_max, s.retry_backoff * (2**retries))
    return step / 2 + random.uniform(0, step / 2)


def remaining_ttl(wire: dict[str, Any]) -> float | None:
    ttl = (wire.get("metadata") or {}).get("ttl")
    if ttl is None:
        return None
    return parse_timestamp_ms(wire["timestamp"]) / 1000 + float(ttl) - time.time()


def _dead(wire: Any, reason: str, error: str, attempts: int) -> Reject:
    status = "expired" if reason == "expired" else "dead"
    runtime.deliverer.record_failure(wire, status, reason, error, attempts)
    logger.warning(
        "dead-lettering message %s: %s (%s)",
        wire.get("id") if isinstance(wire, dict) else "?", reason, error,
    )
    return Reject(f"{reason}: {error}", requeue=False)


@app.task(name=DELIVER_TASK, bind=True, max_retries=None, acks_late=True)
def deliver(self: Task, wire: dict[str, Any], last_error: str | None = None) -> int:
    retries = self.request.retries
    try:
        return runtime.deliverer.deliver(wire, attempts=retries + 1).newly_delivered
    except PermanentFailure as exc:
        raise _dead(wire, exc.reason, exc.message, retries + 1) from exc
    except BusUnavailable as exc:
        max_retries = int((wire.get("metadata") or {}).get("max_retries", 3))
        if retries >= max_retries:
            raise _dead(wire, "retries_exhausted", exc.message, retries + 1) from exc
        ttl_left = remaining_ttl(wire)
        if ttl_left is not None and ttl_left <= 0:
            raise _dead(wire, "expired", "expired while retrying", retries + 1) from exc
        runtime.deliverer.record_failure(wire, "retrying", "unavailable", exc.message, retries + 1)
        # The bus keeps its own attempt count in the (re-signed) message.
        wire["metadata"]["retry_count"] = retries + 1
        runtime.codec.sign(wire)
        options: dict[str, Any] = {}
        if ttl_left is not None:
            options["expiration"] = ttl_left
        raise self.retry(
            args=[wire],
            kwargs={"last_error": exc.message[:500]},
            countdown=backoff(retries),
            max_retries=max_retries,
            argsrepr=f"<message {wire.get('id')}>",
            kwargsrepr="{}",
            **options,
        ) from exc


@app.task(name=DELIVER_BATCH_TASK, bind=True, acks_late=True)
def deliver_batch(self: Task, wires: list[dict[str, Any]]) -> int:
    """Fast path for send_batch. Any message that does not go through on the first try is
    republished as its own `bus.deliver` task, which owns retries and dead-lettering."""
    delivered = 0
    for wire in wires:
        try:
            delivered += runtime.deliverer.deliver(wire, attempts=1).newly_delivered
        except (PermanentFailure, BusUnavailable) as exc:
            logger.info("batch message %s handed to a single task: %s", wire.get("id"), exc)
            queue = self.request.delivery_info.get("routing_key") or "bus.normal"
            ttl_left = remaining_ttl(wire)
            runtime.broker.publish(
                DELIVER_TASK, [wire], queue=queue, task_id=str(wire.get("id")),
                expiration=ttl_left, summary=f"<message {wire.get('id')}>",
            )
    return delivered
