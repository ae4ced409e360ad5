"""Messages admitted whose sender never said the broker had them: published again.

A send is admitted (ADMIT lists it as unconfirmed, with its wire) before it is published,
and its sender's COMMIT after the broker's confirm takes it off that list. A sender that
dies in between (SIGKILL, OOM, a host gone) leaves a message that is `queued` but may be in
no queue; one that delivered it itself (to a worker agent: the admission's round trip
carries the delivery) leaves it `delivered` with no `bus.handle` task to run its handler.
Once the admission's lease has passed, `resend_unconfirmed` (a beat job) publishes such a
message as its `bus.deliver` task, under its own id: delivery is idempotent per message and
recipient, and dispatches the handler again, so a copy the broker had after all changes
nothing. Before it publishes, the sweep takes the message over as a retry's takeover would
(scripts.CLAIM): a sender that was slow rather than dead, and whose publish then fails,
finds it taken and answers `queued` instead of undoing it (scripts.REVOKE). Messages whose
status says they went on (retrying, read, acked, dead, expired), or whose handler has
started, are only taken off the list; one whose text is lost is marked dead (`malformed`).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from bus import scripts
from bus.envelope import Envelope
from bus.errors import BusError, PermanentFailure
from bus.redis_conn import redis_errors
from bus.topology import DELIVER_TASK

logger = logging.getLogger(__name__)

# A pass looks at this many lapsed messages at most (the next pass takes the rest).
SWEEP_LIMIT = 1000

# Where a message may still need its task: `queued` (maybe never published), `delivered`
# (delivered by its sender, whose handler task may never have been published).
_RESENDABLE = frozenset({"queued", "delivered"})


@dataclass(frozen=True, slots=True)
class Lapsed:
    id: str
    lease_end: int
    wire: str | None
    status: str | None


def dedup_name(message_id: str, dedup_key: str | None) -> str:
    """The name a message's dedup record goes by: its sender's key, or its id (the two are
    apart even when their text is the same)."""
    return f"key:{dedup_key}" if dedup_key else f"id:{message_id}"


def lapsed(runtime: Any, now_ms: int, limit: int = SWEEP_LIMIT) -> list[Lapsed]:
    """The unconfirmed messages whose lease ended before `now_ms`, oldest first."""
    k, redis = runtime.store.keys, runtime.store.redis
    with redis_errors("read unconfirmed sends"):
        entries = redis.zrangebyscore(k.unconfirmed, "-inf", now_ms, 0, limit, withscores=True)
        if not entries:
            return []
        pipe = redis.pipeline(transaction=False)
        for message_id, _ in entries:
            pipe.hget(k.unconfirmed_wires, message_id)
            pipe.hget(k.status(message_id), "status")
        found = pipe.execute()
    return [
        Lapsed(message_id, int(score), found[2 * i], found[2 * i + 1])
        for i, (message_id, score) in enumerate(entries)
    ]


def resend_unconfirmed(
    runtime: Any, now_ms: int | None = None, limit: int = SWEEP_LIMIT
) -> dict[str, int]:
    """One pass (`now_ms`: as of that time, Redis's clock by default). Returns how many
    were published again, taken off as having gone on, and found expired."""
    now_ms = runtime.clock.now_ms() if now_ms is None else now_ms
    counts = {"resent": 0, "settled": 0, "expired": 0}
    done: list[tuple[str, str, str, int | None]] = []
    expired: list[str] = []
    lost: list[str] = []
    workers: set[str] | None = None
    for entry in lapsed(runtime, now_ms, limit):
        envelope = _readable(entry)
        if envelope is None:
            done.append((entry.id, "", dedup_name(entry.id, None), entry.lease_end))
            lost += [entry.id] if entry.status in _RESENDABLE else []
            counts["settled"] += 1
            continue
        confirm = (entry.id, envelope.sender, _dedup_name(envelope), entry.lease_end)
        if entry.status == "delivered":
            if workers is None:
                workers = set(runtime.store.worker_agents())
            if envelope.to not in workers or _handled(runtime, entry.id, envelope.to):
                done.append(confirm)  # in its inbox, or its handler task ran: all there
                counts["settled"] += 1
                continue
        if entry.status not in _RESENDABLE:
            done.append(confirm)
            counts["settled"] += 1
            continue
        expires_ms = envelope.expires_ms
        if expires_ms is not None and expires_ms <= now_ms:
            done.append(confirm)
            expired.append(entry.id)
            continue
        claim = _claim(runtime, entry, envelope, confirm[2], now_ms)
        if claim is None:
            continue  # confirmed, undone or taken over since it was read
        try:
            _publish(runtime, envelope, expires_ms, now_ms)
        except BusError as exc:  # the broker is down: a pass after the claim's lease retries
            logger.warning("could not publish unconfirmed message %s: %s", entry.id, exc)
            break
        logger.warning(
            "message %s was admitted but its sender never confirmed it; published again",
            entry.id,
            extra={"message_id": entry.id},
        )
        done.append((*confirm[:3], claim))
        counts["resent"] += 1
    if expired:
        runtime.store.advance_status(expired, "expired", reason="expired")
        counts["expired"] = len(expired)
    if lost:
        error = "its text was lost before it was published"
        runtime.store.advance_status(lost, "dead", reason="malformed", error=error)
    runtime.admission.confirm(done)
    return counts


def _claim(runtime: Any, entry: Lapsed, envelope: Envelope, dedup: str, now_ms: int) -> int | None:
    """Takes the message over (scripts.CLAIM) with a lease of its own; its end, or None
    when the message is no longer as it was read."""
    k, until = runtime.store.keys, now_ms + runtime.retention.send_lease_ms
    keys = [
        k.unconfirmed,
        k.status(entry.id),
        k.dedup(envelope.sender, dedup),
        k.dedup_id(entry.id),
    ]
    args = [entry.id, entry.lease_end, until, uuid.uuid4().hex, envelope.sender]
    claimed = runtime.store.scripts.call(scripts.CLAIM, keys, args, action="claim a send")
    return until if int(claimed) else None


def _handled(runtime: Any, message_id: str, agent: str) -> bool:
    """Whether a handler run started for it: its `bus.handle` task was published."""
    with redis_errors("look at a handler's runs"):
        return bool(runtime.store.redis.exists(runtime.store.keys.handling(message_id, agent)))


def _readable(entry: Lapsed) -> Envelope | None:
    if entry.wire is None:
        return None
    try:
        return Envelope.parse(entry.wire)
    except PermanentFailure:
        logger.warning("unconfirmed message %s is unreadable; dropped", entry.id)
        return None


def _dedup_name(envelope: Envelope) -> str:
    key = envelope.metadata.get("dedup_key")
    return dedup_name(envelope.id, key if isinstance(key, str) else None)


def _publish(runtime: Any, envelope: Envelope, expires_ms: int | None, now_ms: int) -> None:
    runtime.broker.publish(
        DELIVER_TASK,
        [envelope.text],
        queue=envelope.priority.queue,
        task_id=envelope.id,
        expiration=None if expires_ms is None else (expires_ms - now_ms) / 1000,
        headers={"trace_id": envelope.trace_id},
        summary=envelope.summary(),
    )
