"""Hand-made signed messages and raw task messages, for tests of what the bus refuses."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from kombu import Connection, Exchange, Producer

from bus.topology import dead_letter_exchange


def rfc3339(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def wire_for(sender, to, payload, *, when=None, **meta):
    return {
        "version": "1.0",
        "id": str(uuid.uuid4()),
        "from": sender,
        "to": to,
        "type": "event",
        "timestamp": rfc3339(when or datetime.now(UTC)),
        "payload": payload,
        "metadata": {
            "priority": "normal",
            "max_retries": 3,
            "retry_count": 0,
            "compression": "none",
            "encrypted": False,
        }
        | meta,
    }


def publish_raw(env, wire, queue="bus.normal"):
    """Publishes a delivery task straight to the queue, as an attacker on the broker could."""
    body = [[wire], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    with Connection(env.settings().broker_url) as conn:
        Producer(conn).publish(
            body,
            exchange=Exchange("bus", "direct"),
            routing_key=queue,
            serializer="json",
            headers={"task": "bus.deliver", "id": str(wire.get("id"))},
        )


def publish_dead(env, task_id: str, body: bytes, content_type: str | None, headers: dict):
    """Puts a broker message straight into the dead letters, as anyone on the broker can."""
    with Connection(env.settings().broker_url) as conn:
        Producer(conn).publish(
            body,
            exchange=dead_letter_exchange,
            routing_key="",
            content_type=content_type or "",
            content_encoding="binary",
            headers={"task": "bus.deliver", "id": task_id, **headers},
            delivery_mode=2,
        )
