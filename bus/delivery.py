"""Worker-side delivery: verify -> check expiry and clock -> resolve recipients -> store.

`Deliverer.attempt` judges one try and returns a `Verdict` the Celery task only carries
out: delivered; retry after a backoff (Redis or the broker is unavailable: every condition
that heals); or dead with a reason (bus.errors.PERMANENT_REASONS, or retries exhausted).
The outcome is recorded in Redis before the verdict is returned, so nothing is acked to the
broker before it is known what became of it. Delivery is idempotent per (message,
recipient): a task run twice never fills an inbox twice.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from bus.broker import Broker
from bus.clock import Clock
from bus.codec import Codec
from bus.delivery_calls import Delivery
from bus.envelope import Envelope
from bus.errors import BusError, BusUnavailable, PermanentFailure, SecurityError
from bus.handler_runs import RUN_OF
from bus.hooks import Hooks
from bus.routing import broadcast_recipients, topic_recipients
from bus.settings import Settings
from bus.store import RedisStore
from bus.topology import DELIVER_TASK, HANDLE_TASK, agent_queue

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    message_id: str
    recipients: list[str]
    newly_delivered: int
    sent_ms: int  # the message's own timestamp (send time), for latency metrics


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one delivery attempt came to; the Celery task carries it out."""

    kind: str  # "delivered" | "retry" | "dead"
    delivered: int = 0
    reason: str = ""
    error: str = ""
    countdown: float = 0.0  # retry: seconds to wait
    expiration: float | None = None  # retry: seconds of ttl left (broker expiry)
    wire: str = ""  # retry: the message to send again (its retry_count updated)
    # retry of a worker agent's answer: [the handler's result], so the retry sends it again
    # without running the handler again (None: nothing kept)
    kept_answer: list[Any] | None = None


class Deliverer:
    def __init__(
        self,
        store: RedisStore,
        codec: Codec,
        clock: Clock,
        broker: Broker,
        settings: Settings,
    ) -> None:
        self.store = store
        self.codec = codec
        self.clock = clock
        self.broker = broker
        self.settings = settings
        self.hooks = Hooks()  # the worker's own observers (its audit is the message's)
        self.clock_skew = settings.clock_skew
        # Past the dedup window a replay could no longer be recognised: refuse it.
        self.max_age = max(settings.dedup_window, settings.clock_skew)
        self._worker_agents: set[str] = set()
        self._worker_agents_at = float("-inf")

    # -- judging an attempt --------------------------------------------------------------

    def attempt(self, raw: Any, retries: int) -> Verdict:
        """One try at delivering the task argument `raw`; `retries` tries came before."""
        attempts = retries + 1
        try:
            envelope = Envelope.parse(raw)
        except PermanentFailure as exc:
            return self.dead(raw, exc.reason, exc.message, attempts)
        try:
            outcome = self.deliver(envelope, attempts)
            self.dispatch(envelope, outcome)
        except PermanentFailure as exc:
            return self.dead(envelope, exc.reason, exc.message, attempts)
        except BusUnavailable as exc:
            return self.retry_or_dead(envelope, exc, retries)
        self.observe(envelope, outcome)
        return Verdict("delivered", delivered=outcome.newly_delivered)

    def retry_or_dead(
        self, envelope: Envelope, exc: BusError, retries: int, *, run_of: str | None = None
    ) -> Verdict:
        """A transient failure: another try after a backoff, unless the message's retries
        or its ttl have run out. `run_of`: the worker agent whose handler run this is."""
        attempts = retries + 1
        if retries >= envelope.max_retries:
            return self.dead(envelope, "retries_exhausted", exc.message, attempts, run_of=run_of)
        ttl_left = self.ttl_left(envelope)
        if ttl_left is not None and ttl_left <= 0:
            return self.dead(envelope, "expired", "expired while retrying", attempts, run_of=run_of)
        self.record(envelope.id, "retrying", "unavailable", exc.message, attempts, run_of=run_of)
        self.hooks.retrying(envelope)
        return Verdict(
            "retry",
            reason="unavailable",
            error=exc.message[:500],
            countdown=self.backoff(retries),
            expiration=ttl_left,
            wire=self.with_retry_count(envelope, attempts),
        )

    def dead(
        self,
        envelope: Envelope | Any,
        reason: str,
        error: str,
        attempts: int,
        *,
        force: bool = False,
        run_of: str | None = None,
    ) -> Verdict:
        """Records the death (`force`: even over a later status, as a worker agent's
        handler dies after its message was delivered) and says so."""
        status = "expired" if reason == "expired" else "dead"
        known = envelope if isinstance(envelope, Envelope) else None
        if known is not None:
            self.record(known.id, status, reason, error, attempts, force=force, run_of=run_of)
        message_id = known.id if known is not None else "?"
        self.hooks.died(known, status, reason)
        logger.warning(
            "dead-lettering message %s: %s (%s)",
            message_id,
            reason,
            error,
            extra={"message_id": message_id},
        )
        return Verdict("dead", reason=reason, error=error)

    def backoff(self, retries: int) -> float:
        """Exponential backoff with full jitter (never below half the step)."""
        s = self.settings
        step = min(s.retry_backoff_max, s.retry_backoff * 2.0**retries)
        return step / 2 + random.uniform(0, step / 2)

    def ttl_left(self, envelope: Envelope) -> float | None:
        expires_ms = envelope.expires_ms
        return None if expires_ms is None else (expires_ms - self.clock.now_ms()) / 1000

    def with_retry_count(self, envelope: Envelope, attempts: int) -> str:
        """The message for its next try: the bus keeps its own attempt count in it."""
        data = orjson.loads(envelope.text)
        data["metadata"]["retry_count"] = attempts
        return orjson.dumps(self.codec.sign(data)).decode()

    def record(
        self,
        message_id: str,
        status: str,
        reason: str,
        error: str,
        attempts: int,
        *,
        force: bool = False,
        run_of: str | None = None,
    ) -> None:
        """Best effort: Redis may be the thing that is down (the status then catches up
        when the message is tried again or read from the dead letters). `run_of` names the
        worker agent whose handler run this is: a fan-out's status is shared, and a replay
        tells by it whose run the status speaks for (bus.handler_runs)."""
        fields = {} if run_of is None else {RUN_OF: run_of}
        try:
            self.store.advance_status(
                [message_id],
                status,
                force=force,
                reason=reason,
                error=error[:500],
                attempts=attempts,
                **fields,
            )
        except BusUnavailable:
            logger.warning(
                "could not record status %s for %s: Redis unavailable", status, message_id
            )

    # -- delivering ------------------------------------------------------------------------

    def check(self, envelope: Envelope) -> None:
        """Everything that makes a message undeliverable, before touching its recipients."""
        try:
            self.codec.verify(envelope.data)
        except SecurityError as exc:
            raise PermanentFailure(exc.message, reason="bad_signature") from exc
        now_ms = self.clock.now_ms()
        ahead = (envelope.timestamp_ms - now_ms) / 1000
        if ahead > self.clock_skew:
            raise PermanentFailure(
                f"message timestamp is {ahead:.0f}s in the future (allowed skew "
                f"{self.clock_skew:.0f}s)",
                reason="bad_timestamp",
            )
        if -ahead > self.max_age:
            raise PermanentFailure(
                f"message is {-ahead:.0f}s old, older than the replay window", reason="stale"
            )
        expires_ms = envelope.expires_ms
        if expires_ms is not None and now_ms > expires_ms:
            raise PermanentFailure(
                f"message expired {(now_ms - expires_ms) / 1000:.1f}s before delivery",
                reason="expired",
            )

    def recipients(self, envelope: Envelope) -> list[str]:
        if envelope.is_broadcast:
            return broadcast_recipients(self.store.agent_ids(), envelope.sender)
        if envelope.to:
            return [envelope.to]
        topic = envelope.topic
        if not topic:
            raise PermanentFailure(
                "message has no recipient, topic or broadcast", reason="malformed"
            )
        [subscribers] = self.store.topic_subscribers([topic])
        return topic_recipients(
            subscribers, topic, envelope.type, envelope.priority.value, envelope.sender
        )

    def _delivery(self, envelope: Envelope, attempts: int) -> Delivery:
        self.check(envelope)
        return Delivery(
            message_id=envelope.id,
            wire=envelope.text,
            rank=envelope.priority.rank,
            ts_ms=envelope.timestamp_ms,
            recipients=self.recipients(envelope),
            attempts=attempts,
            correlation_id=envelope.correlation_id,
            sender=envelope.sender,
            to="" if envelope.is_broadcast else envelope.to or "",
        )

    def deliver(self, envelope: Envelope, attempts: int) -> Outcome:
        with self.hooks.delivering(envelope, attempts) as current:
            delivery = self._delivery(envelope, attempts)
            delivered = self.store.deliver(delivery)
            if current is not None:
                current.set_attribute("bus.recipients", len(delivery.recipients))
            return Outcome(envelope.id, delivery.recipients, int(delivered), delivery.ts_ms)

    def deliver_here(self, text: str) -> tuple[bool, int]:
        """Delivers a message in this process instead of through its `bus.deliver` task
        (a worker agent's answer, from inside the handle task that owns its retries): the
        same checks and script as the task's first try. Returns whether it went through,
        and how many inboxes this call newly put it in (which an undo may take back).
        When it did not go through, the caller publishes the task, which retries or
        dead-letters it as always (delivery is idempotent per message and recipient)."""
        newly = 0
        try:
            envelope = Envelope.parse(text)
            outcome = self.deliver(envelope, 1)
            newly = outcome.newly_delivered
            self.dispatch(envelope, outcome)
        except BusError as exc:  # PermanentFailure, BusUnavailable: the task's to judge
            logger.info("delivering here did not go through (%s); publishing it", exc.message)
            return False, newly
        self.observe(envelope, outcome)
        return True, newly

    def delivery_ahead(self, text: str) -> tuple[Envelope, Delivery] | None:
        """What a sender delivering `text` itself passes to the DELIVER it runs right
        behind its admission (`store.delivery_call`); None when the message would not pass
        the task's checks (the task is then published and judges it, as always)."""
        try:
            envelope = Envelope.parse(text)
            return envelope, self._delivery(envelope, 1)
        except BusError:
            return None

    def delivered_ahead(self, envelope: Envelope, delivery: Delivery, newly: int) -> bool:
        """After a DELIVER that rode behind the admission: what `deliver_here` does once
        the message is in its inboxes. False when that did not go through (the caller
        publishes the message's task, which delivers idempotently and dispatches)."""
        outcome = Outcome(envelope.id, delivery.recipients, newly, delivery.ts_ms)
        try:
            with self.hooks.delivering(envelope, 1) as current:
                if current is not None:
                    current.set_attribute("bus.recipients", len(delivery.recipients))
                self.dispatch(envelope, outcome)
        except BusError as exc:
            logger.info("dispatching here did not go through (%s); publishing it", exc.message)
            return False
        self.observe(envelope, outcome)
        return True

    def deliver_many(
        self, raws: Sequence[Any]
    ) -> tuple[int, list[tuple[Envelope | Any, BusError]]]:
        """Delivers a batch in one Redis round trip. Returns how many were newly delivered
        and the messages that were not, with why, for the caller to hand on one by one
        (each then owns its retries and dead-lettering)."""
        ready: list[tuple[Envelope, Delivery]] = []
        refused: list[tuple[Envelope | Any, BusError]] = []
        for raw in raws:
            try:
                envelope = Envelope.parse(raw)
            except PermanentFailure as exc:
                refused.append((raw, exc))
                continue
            try:
                ready.append((envelope, self._delivery(envelope, 1)))
            except (PermanentFailure, BusUnavailable) as exc:
                refused.append((envelope, exc))
        if not ready:
            return 0, refused
        try:
            results = self.store.deliver_pipelined([delivery for _, delivery in ready])
        except BusUnavailable as exc:
            return 0, refused + [(envelope, exc) for envelope, _ in ready]
        newly = 0
        for (envelope, d), n in zip(ready, results, strict=True):
            outcome = Outcome(envelope.id, d.recipients, int(n), d.ts_ms)
            try:
                self.dispatch(envelope, outcome)
            except BusUnavailable as exc:
                refused.append((envelope, exc))  # its single task dispatches again
                continue
            self.observe(envelope, outcome)
            newly += outcome.newly_delivered
        return newly, refused

    def hand_on(self, items: Sequence[tuple[Envelope | Any, BusError]], queue: str) -> None:
        """Republishes batch messages that did not go through as single `bus.deliver`
        tasks; raises BusUnavailable when the broker cannot take them (the batch task then
        retries as a whole: delivery is idempotent)."""
        for envelope, error in items:
            if not isinstance(envelope, Envelope):
                self.dead(envelope, "malformed", error.message, 1)
                continue
            logger.info("batch message %s handed to a single task: %s", envelope.id, error)
            self.broker.publish(
                DELIVER_TASK,
                [envelope.text],
                queue=queue,
                task_id=envelope.id,
                expiration=self.ttl_left(envelope),
                summary=envelope.summary(),
            )

    # -- worker agents ---------------------------------------------------------------------

    def dispatch(self, envelope: Envelope, outcome: Outcome) -> None:
        """Enqueues `bus.handle` on each recipient worker agent's own queue. Done for every
        delivery attempt (a redelivered task may have stopped before this); the handle task
        skips messages no longer in the inbox, so a repeat is harmless."""
        for agent in self.worker_agents(outcome.recipients):
            self.broker.publish(
                HANDLE_TASK,
                [agent, envelope.text],
                queue=agent_queue(self.settings, agent),
                task_id=f"{envelope.id}:{agent}",
                expiration=self.ttl_left(envelope),
                summary=f"<message {envelope.id} for {agent}>",
            )

    def worker_agents(self, recipients: list[str]) -> list[str]:
        """Which recipients are served by a worker-agent process (cached for a second)."""
        if not recipients:
            return []
        now = self.clock.now()
        if now - self._worker_agents_at > 1.0:
            self._worker_agents = set(self.store.worker_agents())
            self._worker_agents_at = now
        return [r for r in recipients if r in self._worker_agents]

    def observe(self, envelope: Envelope, outcome: Outcome) -> None:
        latency = self.clock.now() - outcome.sent_ms / 1000
        self.hooks.delivered(envelope, outcome.newly_delivered, latency)
