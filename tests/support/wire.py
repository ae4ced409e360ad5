"""Hand-made signed messages and raw task messages, for tests of what the bus refuses."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from kombu import Connection, Exchange, Producer


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
