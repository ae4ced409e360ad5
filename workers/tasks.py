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

from bus import metrics
from bus.delivery import Outcome, PermanentFailure, parse_timestamp_ms
from bus.errors import BusUnavailable
from bus.topology import DELIVER_BATCH_TASK, DELIVER_TASK, HANDLE_TASK, agent_queue
from workers.app import app, runtime
from workers.quarantine import Quarantine

logger = logging.getLogger(__name__)

QUARANTINE = Quarantine()  # worker-agent handlers in this process (see workers.quarantine)


def backoff(retries: int) -> float:
    """Exponential backoff with full jitter (never below half the step)."""
    s = runtime.settings
    step = min(s.retry_backoff_max, s.retry_backoff * 2.0**retries)
    return step / 2 + random.uniform(0, step / 2)


def remaining_ttl(wire: dict[str, Any]) -> float | None:
    ttl = (wire.get("metadata") or {}).get("ttl")
    if ttl is None:
        return None
    return parse_timestamp_ms(wire["timestamp"]) / 1000 + float(ttl) - time.time()


def dispatch_to_worker_agents(outcome: Outcome, wire: dict[str, Any]) -> None:
    """Enqueues `bus.handle` on each recipient worker agent's own queue. Done for every
    delivery attempt (a redelivered task may have stopped before this); the handle task
    skips messages no longer in the inbox, so a repeat is harmless."""
    for agent in runtime.deliverer.worker_agents(outcome.recipients):
        runtime.broker.publish(
            HANDLE_TASK,
            [agent, wire],
            queue=agent_queue(runtime.settings, agent),
            task_id=f"{wire['id']}:{agent}",
            expiration=remaining_ttl(wire),
            summary=f"<message {wire['id']} for {agent}>",
        )


def observe_delivery(wire: dict[str, Any], outcome: Outcome) -> None:
    if outcome.newly_delivered:
        metrics.count(wire, "delivered")
        latency = time.time() - outcome.sent_ms / 1000
        metrics.observe_latency(str(wire.get("type", "event")), latency)


def _dead(wire: Any, reason: str, error: str, attempts: int) -> Reject:
    status = "expired" if reason == "expired" else "dead"
    if isinstance(wire, dict):
        metrics.count(wire, status)
    metrics.ERRORS.labels(reason).inc()
    runtime.deliverer.record_failure(wire, status, reason, error, attempts)
    logger.warning(
        "dead-lettering message %s: %s (%s)",
        wire.get("id") if isinstance(wire, dict) else "?",
        reason,
        error,
        extra={
            "trace_id": wire.get("trace_id") if isinstance(wire, dict) else None,
            "message_id": wire.get("id") if isinstance(wire, dict) else None,
        },
    )
    return Reject(f"{reason}: {error}", requeue=False)


@app.task(name=DELIVER_TASK, bind=True, max_retries=None, acks_late=True)
def deliver(self: Task, wire: dict[str, Any], last_error: str | None = None) -> int:
    retries = self.request.retries
    try:
        outcome = runtime.deliverer.deliver(wire, attempts=retries + 1)
        dispatch_to_worker_agents(outcome, wire)
        observe_delivery(wire, outcome)
        return outcome.newly_delivered
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
        metrics.count(wire, "retrying")
        metrics.ERRORS.labels("unavailable").inc()
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
    try:
        done, refused = runtime.deliverer.deliver_many(wires)
    except BusUnavailable as exc:
        done, refused = [], [(wire, exc) for wire in wires]
    for wire, outcome in done:
        dispatch_to_worker_agents(outcome, wire)
        observe_delivery(wire, outcome)
    queue = self.request.delivery_info.get("routing_key") or "bus.normal"
    for wire, error in refused:
        logger.info("batch message %s handed to a single task: %s", wire.get("id"), error)
        runtime.broker.publish(
            DELIVER_TASK,
            [wire],
            queue=queue,
            task_id=str(wire.get("id")),
            expiration=remaining_ttl(wire),
            summary=f"<message {wire.get('id')}>",
        )
    return sum(outcome.newly_delivered for _, outcome in done)


@app.task(name=HANDLE_TASK, bind=True, max_retries=None, acks_late=True)
def handle(
    self: Task, agent_name: str, wire: dict[str, Any], last_error: str | None = None
) -> None:
    """Runs a worker agent's handler (only in `msgbus agent run` processes)."""
    from workers.agent_runtime import current_agent, reader

    agent = current_agent()
    retries = self.request.retries
    if agent is None or agent.name != agent_name:
        raise Reject(f"no worker agent {agent_name!r} in this process", requeue=False)
    if not runtime.store.in_inbox(agent_name, wire["id"]):
        return  # already handled and acked (a repeated dispatch)
    message = reader().decode(wire)
    if message.decode_error is not None:
        raise _dead(
            wire,
            "bad_signature" if not message.verified else "undecodable",
            message.decode_error,
            retries + 1,
        )
    # A redelivered message may be the one whose handler killed the last process: it runs
    # alone, so that if it does it again no innocent neighbour dies (and is counted) too.
    with QUARANTINE.enter(bool(self.request.delivery_info.get("redelivered"))):
        _run_handler(self, agent, wire, message)


def _run_handler(self: Task, agent: Any, wire: dict[str, Any], message: Any) -> None:
    agent_name, retries = agent.name, self.request.retries
    runs = runtime.store.count_handling(agent_name, message.id)
    if runs > message.metadata.max_retries + 1 + retries:
        # Started more often than Celery retried it: the handler kills its process (the
        # message came back through reject-on-worker-lost). Stop the loop here.
        runtime.deliverer.record_failure(
            wire,
            "dead",
            "handler_crashed",
            f"handler crashed its worker {runs - 1} times",
            runs,
            force=True,
        )
        raise Reject("handler_crashed", requeue=False)
    try:
        agent.handle(message)
    except Exception as exc:  # noqa: BLE001 - the handler boundary: any error is retried
        error = f"{type(exc).__name__}: {exc}"
        if retries >= message.metadata.max_retries:
            runtime.deliverer.record_failure(
                wire, "dead", "handler_failed", error, retries + 1, force=True
            )
            logger.warning("handler of %s failed %d times: %s", agent_name, retries + 1, error)
            raise Reject(f"handler_failed: {error}", requeue=False) from exc
        runtime.deliverer.record_failure(
            wire, "retrying", "handler_failed", error, retries + 1, force=True
        )
        raise self.retry(
            args=[agent_name, wire],
            kwargs={"last_error": error[:500]},
            countdown=backoff(retries),
            max_retries=message.metadata.max_retries,
            argsrepr=f"<message {wire.get('id')} for {agent_name}>",
            kwargsrepr="{}",
        ) from exc
    runtime.store.ack(agent_name, [message.id])
    runtime.store.advance_status([message.id], "acked", force=True)
