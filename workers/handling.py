"""Running a worker agent's handler on one message: the crash guard, the quarantine, the
handler's own retries, the reply and the ack.

Redis or the broker failing anywhere here raises BusUnavailable to the task, which retries
it apart from the handler's failures. An answer refused for now (the requester's inbox
full, this agent over its rate limit) is kept and sent again by the task's retries, without
running the handler again. The handler may therefore run again for a message it
already handled (at-least-once: handlers are idempotent); its reply has an id made from the
message's, so the requester still gets exactly one response.
"""

from __future__ import annotations

import logging
from typing import Any

from bus.delivery import Verdict
from bus.envelope import Envelope
from bus.errors import BusError, BusUnavailable, InboxFull, RateLimited
from bus.runtime import Runtime
from bus.schema import ReceivedMessage
from workers.agent import WorkerAgent
from workers.quarantine import Quarantine

logger = logging.getLogger(__name__)

QUARANTINE = Quarantine()  # worker-agent handlers in this process (see workers.quarantine)


def run_handler(
    runtime: Runtime,
    request: Any,
    agent: WorkerAgent,
    envelope: Envelope,
    handler_failures: int,
    kept_answer: list[Any] | None = None,
) -> Verdict:
    """`runtime` is the task's bus, `request` the Celery task request; `handler_failures` how
    often the handler itself failed on this message before; `kept_answer` the handler's
    result from an earlier try whose answer was refused for now."""
    store, deliverer = runtime.store, runtime.deliverer
    attempts = request.retries + 1
    # A redelivered message may be the one whose handler killed the last process: it runs
    # alone, so that if it does it again no innocent neighbour dies (and is counted) too.
    redelivered = bool(request.delivery_info.get("redelivered"))
    with QUARANTINE.enter(redelivered, envelope.id) as suspect:
        runs = runtime.handler_runs.start(agent.name, envelope.id, redelivered=suspect)
        if runs == 0:
            return Verdict("delivered")  # already handled and acked (a repeated dispatch)
        if runs < 0:  # buried: it died, and its process was killed before the reject
            return Verdict("dead", reason="dead_already", error="its message is a dead letter")
        message = agent.reader.decode(envelope.text)
        if message.decode_error is not None:
            reason = "bad_signature" if not message.verified else "undecodable"
            return _died(runtime, agent, envelope, reason, message.decode_error, attempts)
        if runs > message.metadata.max_retries + 1:
            # Its task came back more often than the message may be retried, each time from
            # a process that died running it: the handler kills its process. Stop here.
            error = f"its process died running the handler {runs - 1} times (a crash, or killed)"
            return _died(runtime, agent, envelope, "handler_crashed", error, runs)
        ttl_left = deliverer.ttl_left(envelope)
        if ttl_left is not None and ttl_left <= 0 and not kept_answer:
            # (an answer kept for a retry is the handler's already: _answer_later judges it)
            error = "its ttl ran out before its handler could run (again)"
            return _died(runtime, agent, envelope, "expired", error, attempts)
        kept, result = agent.unseal(message.id, kept_answer) if kept_answer else (False, None)
        if kept_answer and not kept:
            logger.warning(
                "%s: a retry of %s kept an answer it did not seal", agent.name, message.id
            )
        try:
            if not kept:
                result = agent.run(message)
        except BusUnavailable:
            raise  # the handler's own bus calls failed: transient, like ours
        except Exception as exc:  # noqa: BLE001 - the handler boundary: any error is retried
            error = f"{type(exc).__name__}: {exc}"
            if handler_failures >= message.metadata.max_retries:
                logger.warning(
                    "handler of %s failed %d times: %s", agent.name, handler_failures + 1, error
                )
                return _died(runtime, agent, envelope, "handler_failed", error, attempts)
            deliverer.record(
                envelope.id,
                "retrying",
                "handler_failed",
                error,
                attempts,
                force=True,
                run_of=agent.name,
            )
            return Verdict(
                "retry",
                reason="handler_failed",
                error=error[:500],
                countdown=deliverer.backoff(handler_failures),
                wire=envelope.text,
            )
        # The reply and the ack stay inside too: a suspect let in as soon as the handler
        # returned could kill this process before its answer and ack are written.
        try:
            agent.reply(message, result)
        except BusUnavailable:
            raise
        except (RateLimited, InboxFull) as exc:
            # Refused for now: the answer is kept and sent again after a pause, until the
            # message's retries run out (the handler does not run again).
            return _answer_later(runtime, request, agent, message, envelope, result, exc)
        except BusError as exc:  # the bus will never take this reply as it is (too big, denied)
            agent.reply_error(message, exc)
            return _died(runtime, agent, envelope, "reply_refused", exc.message, attempts)
        if not store.ack_handled(agent.name, message.id):
            # not there: handled by a run beside this one, or buried by it (it failed)
            runtime.handler_runs.handled_after_burial(agent.name, message.id, envelope.text)
    return Verdict("delivered")


def _died(
    runtime: Runtime, agent: WorkerAgent, envelope: Envelope, reason: str, error: str, tries: int
) -> Verdict:
    """Records the death, then buries the message (bus.handler_runs): out of the inbox,
    its place and its sender's share given back, a marker kept for its replay. Best effort:
    with Redis away it stays in the inbox, where a replay finds it all the same."""
    verdict = runtime.deliverer.dead(envelope, reason, error, tries, force=True, run_of=agent.name)
    try:
        runtime.handler_runs.bury(agent.name, envelope.id, envelope.text, reason)
    except BusUnavailable:
        logger.warning(
            "%s: dead message %s left in the inbox (Redis unavailable)", agent.name, envelope.id
        )
    return verdict


def _answer_later(
    runtime: Runtime,
    request: Any,
    agent: WorkerAgent,
    message: ReceivedMessage,
    envelope: Envelope,
    result: Any,
    refused: RateLimited | InboxFull,
) -> Verdict:
    deliverer = runtime.deliverer
    attempts = request.retries + 1
    error = f"the answer is refused for now: {refused.message}"
    ttl_left = deliverer.ttl_left(envelope)
    if request.retries >= message.metadata.max_retries or (ttl_left is not None and ttl_left <= 0):
        agent.reply_error(message, refused)  # best effort: refused too while the inbox is full
        return _died(runtime, agent, envelope, "reply_refused", error, attempts)
    deliverer.record(
        envelope.id, "retrying", "reply_refused", error, attempts, force=True, run_of=agent.name
    )
    pause = deliverer.backoff(request.retries)
    if isinstance(refused, RateLimited):
        pause = max(pause, refused.retry_after)
    return Verdict(
        "retry",
        reason="reply_refused",
        error=error[:500],
        countdown=pause,
        expiration=ttl_left,
        wire=deliverer.with_retry_count(envelope, attempts),
        kept_answer=agent.seal(message.id, result),
    )
