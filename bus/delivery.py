"""Worker-side delivery: verify -> check expiry and clock -> resolve recipients -> store.

Failures are sorted here so the Celery adapter only has to map them:
- ``PermanentFailure`` (bad signature, expired, malformed): reject into the dead letters;
- ``BusUnavailable`` (Redis down): retry with backoff.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from bus import tracing
from bus.codec import Codec
from bus.errors import BusError, BusUnavailable, SecurityError
from bus.schema import BROADCAST, Priority, Subscription
from bus.store import Delivery, RedisStore

logger = logging.getLogger(__name__)


class PermanentFailure(BusError):
    """The message can never be delivered; it goes to the dead letters with `reason`."""

    code = "permanent_failure"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, reason=reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Outcome:
    message_id: str
    recipients: list[str]
    newly_delivered: int
    sent_ms: int  # the message's own timestamp (send time), for latency metrics


def parse_timestamp_ms(value: Any) -> int:
    return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000)


class Deliverer:
    def __init__(
        self, store: RedisStore, codec: Codec, *, clock_skew: float, max_age: float
    ) -> None:
        self.store = store
        self.codec = codec
        self.clock_skew = clock_skew
        self.max_age = max_age
        self._worker_agents: set[str] = set()
        self._worker_agents_at = float("-inf")

    def check(self, wire: dict[str, Any], now: float | None = None) -> int:
        """Everything that makes a message undeliverable, before touching Redis. Returns
        the message's timestamp in ms."""
        if not isinstance(wire, dict) or not isinstance(wire.get("id"), str):
            raise PermanentFailure("task argument is not a bus message", reason="malformed")
        try:
            self.codec.verify(wire)
        except SecurityError as exc:
            raise PermanentFailure(exc.message, reason="bad_signature") from exc
        now = time.time() if now is None else now
        try:
            sent_ms = parse_timestamp_ms(wire["timestamp"])
        except (KeyError, ValueError) as exc:
            raise PermanentFailure("message has no valid timestamp", reason="malformed") from exc
        sent = sent_ms / 1000
        if sent - now > self.clock_skew:
            raise PermanentFailure(
                f"message timestamp is {sent - now:.0f}s in the future (allowed skew "
                f"{self.clock_skew:.0f}s)",
                reason="bad_timestamp",
            )
        if now - sent > self.max_age:
            # Past the dedup window a replay could no longer be recognised: refuse it.
            raise PermanentFailure(
                f"message is {now - sent:.0f}s old, older than the replay window",
                reason="stale",
            )
        ttl = (wire.get("metadata") or {}).get("ttl")
        if ttl is not None and now > sent + float(ttl):
            raise PermanentFailure(
                f"message expired {now - sent - float(ttl):.1f}s before delivery", reason="expired"
            )
        return sent_ms

    def recipients(self, wire: dict[str, Any]) -> list[str]:
        sender = wire["from"]
        to = wire.get("to")
        if to == BROADCAST:
            return [a for a in self.store.agent_ids() if a != sender]
        if to:
            return [to]
        topic = wire.get("topic")
        if not topic:
            raise PermanentFailure(
                "message has no recipient, topic or broadcast", reason="malformed"
            )
        meta = wire.get("metadata") or {}
        priority = meta.get("priority", "normal")
        [subscribers] = self.store.topic_subscribers([topic])
        return [
            agent
            for agent, filters in sorted(subscribers.items())
            if agent != sender
            and Subscription(agent=agent, topic=topic, **orjson.loads(filters)).matches(
                wire.get("type", "event"), priority
            )
        ]

    def _delivery(self, wire: dict[str, Any], attempts: int) -> Delivery:
        sent_ms = self.check(wire)
        meta = wire.get("metadata") or {}
        try:
            rank = Priority(meta.get("priority", "normal")).rank
        except ValueError as exc:
            raise PermanentFailure("unknown priority", reason="malformed") from exc
        return Delivery(
            message_id=wire["id"],
            wire=orjson.dumps(wire).decode(),
            rank=rank,
            ts_ms=sent_ms,
            recipients=self.recipients(wire),
            attempts=attempts,
            correlation_id=wire.get("correlation_id"),
        )

    def deliver(self, wire: dict[str, Any], attempts: int) -> Outcome:
        trace_id = wire.get("trace_id") if isinstance(wire, dict) else None
        with tracing.span(
            "bus.deliver", trace_id, message_id=wire.get("id"), attempts=attempts
        ) as current:
            delivery = self._delivery(wire, attempts)
            delivered = self.store.deliver(delivery)
            if current is not None:
                current.set_attribute("bus.recipients", len(delivery.recipients))
            return Outcome(wire["id"], delivery.recipients, int(delivered), delivery.ts_ms)

    def deliver_many(
        self, wires: list[dict[str, Any]]
    ) -> tuple[list[tuple[dict[str, Any], Outcome]], list[tuple[dict[str, Any], BusError]]]:
        """Delivers a batch in one Redis round trip. Returns (delivered, refused): refused
        messages (bad signature, expired...) are left for the caller to hand on."""
        ready: list[tuple[dict[str, Any], Delivery]] = []
        refused: list[tuple[dict[str, Any], BusError]] = []
        for wire in wires:
            try:
                ready.append((wire, self._delivery(wire, 1)))
            except PermanentFailure as exc:
                refused.append((wire, exc))
        if not ready:
            return [], refused
        results = self.store.deliver_pipelined([delivery for _, delivery in ready])
        return [
            (wire, Outcome(wire["id"], d.recipients, int(n), d.ts_ms))
            for (wire, d), n in zip(ready, results, strict=True)
        ], refused

    def worker_agents(self, recipients: list[str]) -> list[str]:
        """Which recipients are served by a worker-agent process (cached for a second)."""
        now = time.monotonic()
        if now - self._worker_agents_at > 1.0:
            self._worker_agents = set(self.store.worker_agents())
            self._worker_agents_at = now
        return [r for r in recipients if r in self._worker_agents]

    def record_failure(
        self, wire: Any, status: str, reason: str, error: str, attempts: int, force: bool = False
    ) -> None:
        """Best effort: Redis may be the thing that is down."""
        message_id = wire.get("id") if isinstance(wire, dict) else None
        if not isinstance(message_id, str):
            return
        try:
            self.store.advance_status(
                [message_id],
                status,
                force=force,
                reason=reason,
                error=error[:500],
                attempts=attempts,
            )
        except BusUnavailable:
            logger.warning(
                "could not record status %s for %s: Redis unavailable", status, message_id
            )
