"""The send path: validate -> authorize -> encode + sign -> resolve recipients -> admit ->
publish.

Admission (bounds, rate limit per recipient, dedup, status `queued`, sender history,
audit) is one Redis call before the publish, so a refusal leaves nothing anywhere. The
publish returns once RabbitMQ has confirmed the task. While Redis is down trusted code's
send still goes to RabbitMQ (degraded: no dedup, bounds or status until the worker records
them); an LLM agent's (the front door) is refused.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from typing import Any

from bus import jsonvalue
from bus.admission import AcceptRecord, Admitted, RateLimit
from bus.delivery_calls import Delivery
from bus.envelope import Envelope
from bus.errors import (
    BusError,
    BusUnavailable,
    LimitExceeded,
    ValidationError,
)
from bus.guard import Guard
from bus.hooks import Hooks
from bus.linger import Linger
from bus.outbox import dedup_name
from bus.prepared import MAX_TASK_MESSAGE_BYTES, Prepared, task_groups
from bus.refusals import (
    admission_refusal,
    as_bus_error,
    partly_sent,
    still_in_flight,
    unavailable_at_admission,
)
from bus.routing import broadcast_recipients, topic_recipients
from bus.runtime import Runtime
from bus.schema import RESERVED_FIELD_NAMES, Message, Receipt, Status, given_id_problem
from bus.topology import DELIVER_BATCH_TASK, DELIVER_TASK
from bus.validation import parse

logger = logging.getLogger(__name__)

Limits = dict[str, RateLimit | None]  # each sender's rate limit (None: no limit)

# Everything of a message but its payload (ids, addresses, metadata, headers, extra
# fields): a bound apart from MESSAGE_BUS_MAX_PAYLOAD_BYTES, so that a stored message is
# never larger than the two together.
MAX_ENVELOPE_BYTES = 64 * 1024


class _Unsent(Exception):
    """The broker refused `prepared` (and what was to follow it), after it had taken
    `sent` (the tasks of a batch before the refused one)."""

    def __init__(
        self, prepared: list[Prepared], error: BusError, sent: list[Prepared] | None = None
    ) -> None:
        super().__init__(error.message)
        self.prepared = prepared
        self.error = error
        self.sent = sent or []


class Sender:
    def __init__(
        self, runtime: Runtime, guard: Guard, hooks: Hooks, *, deliver_here: bool = False
    ) -> None:
        """`deliver_here`: a single message to one agent is delivered by this process
        (Deliverer.deliver_here) rather than by a worker, its task published only when that
        does not go through. For code that runs inside a task that is retried if it fails
        (a worker agent's handler): one broker hop and one Celery task less per answer.
        A message to a worker agent is always delivered so: its Celery task is the agent's
        own `bus.handle`, which that delivery publishes (see `_here`)."""
        self.runtime = runtime
        self.settings = runtime.settings
        self.guard = guard
        self.hooks = hooks
        self.deliver_here = deliver_here
        # Single sends ride the batch path under concurrency (bus.linger); off at 0.
        self.linger: Linger[Prepared] | None = None
        if self.settings.send_linger_ms > 0:
            self.linger = Linger(
                lambda group: self._publish(group, batch=True),
                wait=self.settings.send_linger_ms / 1000,
                max_items=self.settings.max_batch,
                max_size=self.settings.max_task_bytes,
            )

    def prepare(self, data: Message | dict[str, Any], where: str = "") -> Prepared:
        message = parse(Message, data, where)
        given_id = bool(message.id)
        if not given_id:
            message.id = str(uuid.uuid4())
        # Before the payload's encryption binds the id. correlation_id is not checked: it
        # names a message that may predate this rule, and stays answerable.
        for name in ("id", "trace_id"):
            value = getattr(message, name) if name != "id" or given_id else None
            if value is not None and (problem := given_id_problem(value)):
                raise ValidationError(f"{where}{name}: {problem}")
        message.timestamp = self.runtime.clock.utcnow()
        if message.trace_id is None:
            message.trace_id = uuid.uuid4().hex
        if message.metadata.retry_count:
            raise ValidationError(
                f"{where}metadata.retry_count: the bus's own count of tries; leave it out"
            )
        if "max_retries" not in message.metadata.model_fields_set:
            message.metadata.max_retries = self.settings.default_max_retries
        meta = message.metadata
        # The payload is checked and encoded first, and the rest of the message checked
        # apart: nothing JSON cannot carry reaches a serializer (pydantic's, orjson's).
        payload = self.runtime.codec.encode_payload(
            message.id, message.payload, meta.compression.value, meta.encrypted, f"{where}payload"
        )
        clash = sorted(set(message.model_extra or {}) & RESERVED_FIELD_NAMES)
        if clash:
            raise ValidationError(
                f"{where}{clash[0]}: a name of the bus's own message fields; an extra field "
                "may not take it"
            )
        envelope = message.model_dump(by_alias=True, exclude={"payload", "timestamp"})
        rest = jsonvalue.encode(envelope, max_depth=16, where=where.rstrip(".") or "message")
        if len(rest) > MAX_ENVELOPE_BYTES:
            raise LimitExceeded(
                f"{where or 'message '}{message.id}: everything but the payload takes "
                f"{len(rest)} bytes; the limit is {MAX_ENVELOPE_BYTES} (headers and extra "
                "fields are for small values: put data in the payload)",
                limit="max_envelope_bytes",
            )
        self.guard.authorize_send(message)
        wire = message.model_copy(update={"payload": None}).wire()
        wire["payload"] = payload
        self.runtime.codec.sign(wire)
        text = jsonvalue.dumps(wire, where="message")
        ts = int(message.timestamp.timestamp() * 1000)
        direct = message.to if message.to and not message.is_broadcast else ""
        record = AcceptRecord(
            id=message.id,
            dedup_key=dedup_name(message.id, meta.dedup_key),
            sender=message.sender,
            queue=message.priority.queue,
            wire=text.decode(),
            ts_ms=ts,
            expires_ms=ts + int(meta.ttl * 1000) if meta.ttl else None,
            may_repeat=given_id or meta.dedup_key is not None,
            to=direct,
            declared=bool(direct) and self.guard.policy.declares(direct),
            recipients=(direct,) if direct else (),
        )
        prepared = Prepared(message, wire, record)
        if prepared.task_bytes > MAX_TASK_MESSAGE_BYTES:
            raise LimitExceeded(
                f"{where or 'message '}{message.id}: as a task it would take "
                f"{prepared.task_bytes} bytes (JSON writes each non-ASCII character as "
                f"\\uXXXX), past RabbitMQ's max_message_size of 128 MiB; send less per "
                "message",
                limit="max_task_bytes",
            )
        return prepared

    def send(
        self, prepared: list[Prepared], batch: bool = False, front_door: bool = False
    ) -> list[Receipt]:
        """`front_door`: sent by an LLM agent through MCP (its rate limit applies, not the
        trusted code's)."""
        first = prepared[0].message
        with self.hooks.sending(
            first.trace_id,
            message_id=first.id,
            sender=first.sender,
            count=len(prepared),
        ):
            self.runtime.keyring.check_verifiable()
            for p in prepared if front_door else ():
                self.guard.authorize_front_door(p.message)
            # Each sender's own bucket pays for its messages (trusted code may batch several).
            senders = dict.fromkeys(p.message.sender for p in prepared)
            limits = {s: self.guard.rate_limit_for(s, front_door=front_door) for s in senders}
            receipts = self._admit_and_publish(prepared, batch, limits, front_door)
        self.hooks.sent([p.wire for p in prepared], receipts)
        return receipts

    def _admit_and_publish(
        self, prepared: list[Prepared], batch: bool, limits: Limits, front_door: bool
    ) -> list[Receipt]:
        admitted: Admitted | None
        ahead = self._delivery_ahead(prepared, batch)
        try:
            prepared = self._with_recipients(prepared)
            then = None
            if ahead is not None:
                then = self.runtime.store.delivery_call(ahead[1], prepared[0].record.token)
            admitted = self.runtime.admission.admit(
                [p.record for p in prepared], self._audit(prepared), limits, then=then
            )
        except BusUnavailable as exc:
            if front_door:
                # An LLM agent's send is not taken unchecked: its rate limit, inbox caps and
                # dedup live in Redis. Refused whole, so its retry cannot be a duplicate;
                # unless Redis went away after it may have taken the admission: then says so.
                raise unavailable_at_admission(exc, [p.message for p in prepared]) from exc
            _warn_degraded(exc)
            admitted = None
            for p in prepared:
                p.degraded = True
        if admitted is not None:
            first, newly = prepared[0], admitted.followed
            prepared, admitted = self._settle(prepared, admitted, limits)
            # (-1: the admission did not make the status, so nothing was delivered; an
            # error: delivered the usual way below)
            if ahead is not None and isinstance(newly, int) and newly >= 0:
                first.ahead = (*ahead, newly)
        duplicates = _duplicates(admitted, len(prepared))
        fresh = [p for p, dup in zip(prepared, duplicates, strict=True) if dup is None]
        try:
            self._publish_all(fresh, batch)
        except _Unsent as unsent:
            # (what another call took over meanwhile goes out all the same: queued)
            out = unsent.sent + self._undo(unsent, revoke=admitted is not None)
            if not out:
                raise unsent.error from unsent.error.__cause__
            if admitted is not None:
                self._commit(unsent.sent)
            if len(out) < len(fresh):
                error, sent = unsent.error, {id(p) for p in out}
                queued = [(i, p.message) for i, p in enumerate(prepared) if id(p) in sent]
                raise partly_sent(error, queued, len(fresh) - len(out)) from error.__cause__
        if admitted is not None:
            self._commit(fresh)
        return _receipts(prepared, duplicates)

    def _commit(self, published: list[Prepared]) -> None:
        """The broker has them: no longer unconfirmed, their dedup records final."""
        try:
            self.runtime.admission.commit([p.record for p in published])
        except BusUnavailable as exc:
            # Published all the same: bus.outbox sends them once more (delivered once), and
            # a retry of these may be published twice too.
            logger.warning("the broker's confirm left unrecorded: %s", exc)

    def _settle(
        self, prepared: list[Prepared], admitted: Admitted, limits: Limits
    ) -> tuple[list[Prepared], Admitted]:
        """After the first admission: raises its refusal, and settles the messages whose
        dedup key or id an earlier send holds. While that send is in flight they wait for it
        (and are its duplicates once the broker confirmed it); when its lease ran out (its
        sender died before the confirm) they take it over and are admitted again under its
        id, rate-limited and bounded like any new message. A refusal or failure at a later
        step undoes what this send admitted before it."""
        if admitted.refusal is not None:
            refused = self._refusal([p.message for p in prepared], admitted.refusal, limits)
            undone = [prepared[i] for i in admitted.taken_back]
            self.guard.store_audits(self._audit(undone, "failed", error=refused.code))
            raise refused
        prepared, duplicates = list(prepared), list(admitted.duplicates)
        # What this send wrote (and must take back if a later step fails): never a
        # duplicate, whose records are the earlier message's; and the leases it took over.
        accepted = {
            i for i in range(len(prepared)) if duplicates[i] is None and i not in admitted.unsettled
        }
        taken: set[int] = set()
        # A bound on the wait: the lease seen, and one more if another retry took it over.
        deadline = time.monotonic() + 2 * self.runtime.retention.send_lease_ms / 1000 + 2.0
        pause = 0.002
        try:
            while admitted.unsettled:
                for i, earlier in admitted.retry_as.items():
                    prepared[i] = self._under(prepared[i], earlier)
                    taken.add(i)
                if admitted.in_flight and time.monotonic() > deadline:
                    i, flight = next(iter(admitted.in_flight.items()))
                    raise still_in_flight(prepared[i].message, flight)
                if admitted.in_flight:
                    left = min(f.left for f in admitted.in_flight.values())
                    time.sleep(min(pause, left) + 0.001)
                    pause = min(pause * 2, 0.1)
                unsettled = admitted.unsettled
                again = [prepared[i] for i in unsettled]
                admitted = self.runtime.admission.admit(
                    [p.record for p in again], self._audit(again), limits
                )
                if admitted.refusal is not None:
                    raise self._refusal([p.message for p in again], admitted.refusal, limits)
                for n, i in enumerate(unsettled):
                    duplicates[i] = admitted.duplicates[n]
                    if n not in admitted.unsettled and duplicates[i] is None:
                        accepted.add(i)
                admitted = Admitted(
                    duplicates,
                    {unsettled[n]: earlier for n, earlier in admitted.retry_as.items()},
                    {unsettled[n]: flight for n, flight in admitted.in_flight.items()},
                )
        except BusError as exc:
            undo = sorted(accepted | {i for i in taken if duplicates[i] is None})
            kept = self.runtime.admission.revoke([prepared[i].record for i in undo])
            failed = [prepared[i] for i in sorted(accepted) if prepared[i].record.id not in kept]
            self.guard.store_audits(self._audit(failed, "failed", error=exc.code))
            if kept:  # taken over meanwhile (bus.outbox): those go out
                out = [(i, prepared[i].message) for i in undo if prepared[i].record.id in kept]
                raise partly_sent(exc, out, len(prepared) - len(out)) from exc
            raise
        return prepared, admitted

    def _under(self, p: Prepared, earlier: str) -> Prepared:
        """`p` prepared again under `earlier`'s id, keeping its recipients and its token (so
        that its next admission is the takeover of that id's lease)."""
        redo = self.prepare(p.message.model_copy(update={"id": earlier}))
        record = dataclasses.replace(
            redo.record, recipients=p.record.recipients, token=p.record.token, takeover=True
        )
        return Prepared(redo.message, redo.wire, record)

    def _with_recipients(self, prepared: list[Prepared]) -> list[Prepared]:
        """Resolves who each topic or broadcast message reaches now (one round trip), so
        admission can charge and bound every recipient; the worker resolves them again."""
        fanout = [p for p in prepared if not p.record.to]
        if not fanout:
            return prepared
        topics = sorted({p.message.topic for p in fanout if p.message.is_topic and p.message.topic})
        broadcast = any(p.message.is_broadcast for p in fanout)
        subscribers, agents = self.runtime.store.fanout_index(topics, broadcast)
        by_topic = dict(zip(topics, subscribers, strict=True))
        out = []
        for p in prepared:
            m = p.message
            if p.record.to:
                out.append(p)
                continue
            if m.is_broadcast:
                recipients = broadcast_recipients(agents, m.sender)
            else:
                recipients = topic_recipients(
                    by_topic.get(m.topic or "", {}),
                    m.topic or "",
                    m.type.value,
                    m.priority.value,
                    m.sender,
                )
            if len(recipients) > self.settings.max_recipients:
                raise LimitExceeded(
                    f"message {m.id} would reach {len(recipients)} agents; the limit is "
                    f"{self.settings.max_recipients} (MESSAGE_BUS_MAX_RECIPIENTS)",
                    limit="max_recipients",
                )
            record = dataclasses.replace(p.record, recipients=tuple(recipients))
            out.append(Prepared(m, p.wire, record))
        return out

    def _refusal(
        self, messages: list[Message], refusal: tuple[str, ...], limits: Limits
    ) -> BusError:
        return admission_refusal(self.guard, self.hooks, self.settings, messages, refusal, limits)

    def _audit(
        self, prepared: list[Prepared], outcome: str = "ok", **fields: Any
    ) -> list[dict[str, str]]:
        return [
            self.guard.audit_entry(
                "send",
                p.message.sender,
                _target(p.message),
                outcome,
                trace_id=p.message.trace_id,
                message_id=p.message.id,
                **fields,
            )
            for p in prepared
        ]

    def _undo(self, unsent: _Unsent, *, revoke: bool) -> list[Prepared]:
        """Nothing half-done: what the broker did not take is no longer `queued`, nor in
        an inbox this process put it in. Returns what another call took over meanwhile
        (a retry, or bus.outbox once this call's lease had passed): left as it is."""
        left: set[str] = set()
        if revoke:
            # (a delivery this call made is taken back with the rest, while the message is
            # still this call's: not once another send took its lease over)
            undeliver = {p.record.id for p in unsent.prepared if p.delivered_here}
            left = self.runtime.admission.revoke([p.record for p in unsent.prepared], undeliver)
        undone = [p for p in unsent.prepared if p.record.id not in left]
        self.guard.store_audits(self._audit(undone, "failed", error=unsent.error.code))
        return [p for p in unsent.prepared if p.record.id in left]

    def _publish_all(self, prepared: list[Prepared], batch: bool) -> None:
        """One task per message, or per priority for a batch; raises _Unsent with what is
        left when the broker refuses one. A single send lingers when that is on (unless
        this process delivers it itself)."""
        if (
            self.linger is not None
            and not batch
            and len(prepared) == 1
            and not self._here(prepared[0])
        ):
            p = prepared[0]
            try:
                self.linger.send(p.record.queue, p, p.task_bytes)
            except Exception as exc:  # noqa: BLE001 - whatever it was, undo it
                raise _Unsent(prepared, as_bus_error(exc)) from exc
            return
        pending = task_groups(prepared, batch, self.settings.max_task_bytes)
        sent: list[Prepared] = []
        while pending:
            try:
                self._publish(pending[0], batch)
            except Exception as exc:  # noqa: BLE001 - whatever it was, undo what is left
                error = as_bus_error(exc)
                raise _Unsent([p for group in pending for p in group], error, sent) from exc
            sent += pending.pop(0)

    def _delivery_ahead(
        self, prepared: list[Prepared], batch: bool
    ) -> tuple[Envelope, Delivery] | None:
        """For a single send this process delivers itself: its delivery, to run right
        behind the admission in the same round trip (one round trip less per request to a
        worker agent and per answer). Not with replicas required: each script's writes
        then have their own WAIT."""
        if batch or len(prepared) != 1 or self.runtime.replication.on:
            return None
        if not self._here(prepared[0]):
            return None
        return self.runtime.deliverer.delivery_ahead(prepared[0].record.wire)

    def _here(self, p: Prepared) -> bool:
        """Whether this process delivers `p` itself: in a worker agent's handler, or when its
        one recipient is a worker agent. A `bus.deliver` task would only be a detour for the
        latter: its worker would deliver and then publish the agent's `bus.handle` task, as
        this does (a broker hop and a task less per request; the same script, checks and
        dispatch, and the task is still published when that does not go through)."""
        to = p.record.to
        if not to:
            return False
        if self.deliver_here:
            return True
        try:
            return bool(self.runtime.deliverer.worker_agents([to]))
        except BusUnavailable:
            return False  # Redis is down: the worker delivers it once Redis is back

    def _publish(self, group: list[Prepared], batch: bool) -> None:
        first = group[0].message
        ttls = [p.message.metadata.ttl for p in group]
        if batch and len(group) > 1:
            # The broker may expire a batch task only once every message in it has expired
            # (the longest ttl); each message's own ttl is still checked at delivery.
            longest = max(ttls) if all(t is not None for t in ttls) else None  # type: ignore[type-var]
            self.runtime.broker.publish(
                DELIVER_BATCH_TASK,
                [[p.record.wire for p in group]],
                queue=first.priority.queue,
                task_id=str(uuid.uuid4()),
                expiration=longest,
                headers={"trace_id": first.trace_id},
                summary=f"<batch of {len(group)}>",
            )
            return
        deliverer, p = self.runtime.deliverer, group[0]
        # A delivery this call made is taken back by its undo (REVOKE, while the message is
        # still this call's), also one made by a first run whose reply was lost (then this
        # run says "0 newly"); never by a takeover, whose message the earlier sender may
        # have delivered and published. Without an admission (Redis failed it) the worker
        # delivers: nothing here could be undone.
        if p.ahead is not None:
            p.delivered_here = not p.record.takeover
            if deliverer.delivered_ahead(*p.ahead):
                return
        elif self._here(p) and not p.degraded:
            p.delivered_here = not p.record.takeover
            if deliverer.deliver_here(p.record.wire)[0]:
                return
        self.runtime.broker.publish(
            DELIVER_TASK,
            [group[0].record.wire],
            queue=first.priority.queue,
            task_id=first.id,
            expiration=first.metadata.ttl,
            headers={"trace_id": first.trace_id},
            summary=f"<message {first.id} {first.type.value} from {first.sender}>",
        )


def _duplicates(admitted: Admitted | None, count: int) -> list[str | None]:
    """What each message duplicates; nothing is known without Redis (degraded send)."""
    return admitted.duplicates if admitted is not None else [None] * count


def _warn_degraded(exc: BusUnavailable) -> None:
    # Redis is down: the message still goes to RabbitMQ and waits there (the worker retries
    # until Redis is back and records its status then). Dedup, bounds and rate limiting
    # cannot be checked meanwhile.
    logger.warning("sending without Redis (no dedup, status or rate limit): %s", exc)


def _receipts(prepared: list[Prepared], duplicates: list[str | None]) -> list[Receipt]:
    receipts = []
    for p, duplicate_of in zip(prepared, duplicates, strict=True):
        m = p.message
        receipts.append(
            Receipt(
                id=m.id,
                status=Status.duplicate if duplicate_of else Status.queued,
                queue=m.priority.queue,
                trace_id=m.trace_id,
                duplicate_of=duplicate_of,
            )
        )
    return receipts


def _target(message: Message) -> str:
    if message.is_broadcast:
        return "*"
    return message.to or f"topic:{message.topic}"
