"""Delivery tasks: thin adapters carrying out the bus's verdicts in Celery.

- delivered: return (Celery acks);
- retry: a Celery retry with the verdict's backoff and remaining ttl;
- dead: ``Reject(requeue=False)`` -> RabbitMQ dead-letters it to bus.dlx.

Every task argument is the signed message's JSON *text* (bus.envelope): kombu's JSON and
its object hook never see the payload as structure.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject, Retry

from bus.delivery import Verdict
from bus.envelope import Envelope
from bus.errors import BusUnavailable, PermanentFailure
from bus.runtime import Runtime
from bus.topology import DELIVER_BATCH_TASK, DELIVER_TASK, HANDLE_TASK
from workers.agent_runtime import current_agent
from workers.handling import run_handler

logger = logging.getLogger(__name__)

# A retry the broker would not take is put back on its queue after this pause instead
# (Celery would reject it into the dead letters, where a transient outage does not belong).
REQUEUE_PAUSE_MAX = 5.0


def carry_out(
    task: Task,
    verdict: Verdict,
    args: Callable[[str], list[Any]],
    name: str,
    **kwargs: Any,
) -> int:
    if verdict.kind == "delivered":
        return verdict.delivered
    if verdict.kind == "dead":
        raise Reject(f"{verdict.reason}: {verdict.error}", requeue=False)
    options: dict[str, Any] = {}
    if verdict.expiration is not None:
        options["expiration"] = max(verdict.expiration, 0.001)
    try:
        raise task.retry(
            args=args(verdict.wire),
            kwargs={"last_error": verdict.error, **kwargs},
            countdown=verdict.countdown,
            max_retries=None,  # the bus counts (Deliverer.retry_or_dead)
            argsrepr=name,
            kwargsrepr="{}",
            **options,
        )
    except Retry:
        raise
    except Reject as exc:  # the broker did not take the retry: keep it in its queue
        logger.warning("retry of %s not published (%s); requeued", name, exc.reason)
        time.sleep(min(verdict.countdown, REQUEUE_PAUSE_MAX))
        raise Reject(exc.reason, requeue=True) from exc


def runtime_of(task: Task) -> Runtime:
    """The bus the task's app delivers for (workers.app.create_app)."""
    runtime: Runtime = task.app.conf.bus_runtime
    return runtime


def deliver(self: Task, wire: Any, last_error: str | None = None) -> int:
    verdict = runtime_of(self).deliverer.attempt(wire, self.request.retries)
    return carry_out(self, verdict, lambda again: [again], "<message retry>")


def deliver_batch(self: Task, wires: Any, last_error: str | None = None) -> int:
    """Fast path for send_batch. A message that does not go through on the first try is
    handed on as its own `bus.deliver` task, which owns retries and dead-lettering; if even
    that cannot be published the whole batch is tried again (delivery is idempotent)."""
    deliverer = runtime_of(self).deliverer
    wires = wires if isinstance(wires, list) else [wires]
    delivered, refused = deliverer.deliver_many(wires)
    queue = self.request.delivery_info.get("routing_key") or "bus.normal"
    try:
        deliverer.hand_on(refused, queue)
    except BusUnavailable as exc:
        backoff = deliverer.backoff(min(self.request.retries, 6))
        again = Verdict("retry", error=exc.message, countdown=backoff)
        return carry_out(self, again, lambda _: [wires], f"<batch of {len(wires)}>")
    return delivered


def handle(
    self: Task,
    agent_name: str,
    wire: Any,
    last_error: str | None = None,
    outages: int = 0,
    kept_answer: list[Any] | None = None,
) -> int:
    """Runs a worker agent's handler (only in `msgbus agent run` processes). Redis or the
    broker being unavailable anywhere on the way is transient: retried with backoff, and
    counted apart from the handler's own failures (`outages`), as are the retries of an
    answer refused for now (`kept_answer`: the handler's result, sealed, sent again without
    running the handler; kept across outages too)."""
    runtime = runtime_of(self)
    agent = current_agent()
    if agent is None or agent.name != agent_name:
        raise Reject(f"no worker agent {agent_name!r} in this process", requeue=False)
    try:
        envelope = Envelope.parse(wire)
    except PermanentFailure as exc:
        runtime.deliverer.dead(wire, exc.reason, exc.message, self.request.retries + 1)
        raise Reject(f"{exc.reason}: {exc.message}", requeue=False) from exc
    try:
        verdict = run_handler(
            runtime, self.request, agent, envelope, self.request.retries - outages, kept_answer
        )
    except BusUnavailable as exc:
        verdict = runtime.deliverer.retry_or_dead(envelope, exc, outages, run_of=agent_name)
        verdict = dataclasses.replace(verdict, kept_answer=kept_answer)
        outages += 1
    else:
        if verdict.kept_answer is not None:  # the answer's retry, not the handler's
            outages += 1
    return carry_out(
        self,
        verdict,
        lambda again: [agent_name, again],
        f"<message {envelope.id} for {agent_name}>",
        outages=outages,
        kept_answer=verdict.kept_answer,
    )


def register(app: Celery) -> None:
    """The delivery tasks on `app` (each app's tasks find their bus through it)."""
    for name, body in ((DELIVER_TASK, deliver), (DELIVER_BATCH_TASK, deliver_batch)):
        app.task(name=name, bind=True, max_retries=None, acks_late=True, shared=False)(body)
    app.task(name=HANDLE_TASK, bind=True, max_retries=None, acks_late=True, shared=False)(handle)
