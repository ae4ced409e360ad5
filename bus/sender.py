"""The send path: validate -> authorize -> encode + sign -> admit -> publish.

Admission (rate limit, dedup, status `queued`, sender history, audit) is one Redis call;
it runs before the publish when it can refuse the messages, and beside it otherwise (see
bus.admission). The publish returns once RabbitMQ has confirmed the task.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from typing import Any

from bus import jsonvalue, metrics, tracing
from bus.admission import AcceptRecord, Admitted, PendingAdmission, RateLimit
from bus.errors import BusError, BusUnavailable, ValidationError
from bus.guard import Guard
from bus.runtime import Runtime
from bus.schema import Message, Receipt, Status
from bus.topology import DELIVER_BATCH_TASK, DELIVER_TASK
from bus.validation import parse

logger = logging.getLogger(__name__)


class Prepared:
    """A validated, signed message ready to admit and publish."""

    __slots__ = ("message", "wire", "record")

    def __init__(self, message: Message, wire: dict[str, Any], record: AcceptRecord) -> None:
        self.message = message
        self.wire = wire
        self.record = record


class _Unsent(Exception):
    """The broker refused `prepared` (and what was to follow it)."""

    def __init__(self, prepared: list[Prepared], error: BusError) -> None:
        super().__init__(error.message)
        self.prepared = prepared
        self.error = error


class Sender:
    def __init__(self, runtime: Runtime, guard: Guard) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.guard = guard

    def prepare(self, data: Message | dict[str, Any], where: str = "") -> Prepared:
        message = parse(Message, data, where)
        given_id = bool(message.id)
        if not given_id:
            message.id = str(uuid.uuid4())
        elif len(message.id) > 128:
            raise ValidationError(f"{where}id: at most 128 characters")
        message.timestamp = self.runtime.clock.utcnow()
        if message.trace_id is None:
            message.trace_id = uuid.uuid4().hex
        if "max_retries" not in message.metadata.model_fields_set:
            message.metadata.max_retries = self.settings.default_max_retries
        meta = message.metadata
        self.guard.authorize_send(message)
        wire = message.wire()
        wire["payload"] = self.runtime.codec.encode_payload(
            message.id, message.payload, meta.compression.value, meta.encrypted
        )
        self.runtime.codec.sign(wire)
        text = jsonvalue.dumps(wire, where="message")
        ts = int(message.timestamp.timestamp() * 1000)
        record = AcceptRecord(
            id=message.id,
            dedup_key=meta.dedup_key or message.id,
            sender=message.sender,
            queue=message.priority.queue,
            wire=text.decode(),
            ts_ms=ts,
            expires_ms=ts + int(meta.ttl * 1000) if meta.ttl else None,
            may_repeat=given_id or meta.dedup_key is not None,
        )
        return Prepared(message, wire, record)

    def send(self, prepared: list[Prepared], batch: bool = False) -> list[Receipt]:
        first = prepared[0].message
        with tracing.span(
            "bus.send",
            first.trace_id,
            message_id=first.id,
            sender=first.sender,
            count=len(prepared),
        ):
            self.runtime.keyring.check_verifiable()
            limit = self.guard.rate_limit_for(first.sender, cost=len(prepared))
            # Only a caller-given id or dedup key can repeat an earlier message.
            if limit is None and not any(p.record.may_repeat for p in prepared):
                receipts = self._send_beside(prepared, batch)
            else:
                receipts = self._send_after(prepared, batch, limit)
        for p, receipt in zip(prepared, receipts, strict=True):
            metrics.count(p.wire, receipt.status.value)
        return receipts

    def _send_after(
        self, prepared: list[Prepared], batch: bool, limit: RateLimit | None
    ) -> list[Receipt]:
        """Admits first (it may refuse), then publishes what it accepted."""
        admitted: Admitted | None
        try:
            admitted = self.runtime.admission.admit(
                [p.record for p in prepared], self._audit(prepared), limit
            )
        except BusUnavailable as exc:
            _warn_degraded(exc)
            admitted = None
        if admitted is not None and admitted.retry_after_ms is not None and limit is not None:
            raise self.guard.throttled(prepared[0].message.sender, limit, admitted.retry_after_ms)
        if admitted is not None and admitted.conflict is not None:
            taken = prepared[admitted.conflict].message.id
            raise ValidationError(
                f"id {taken!r} belongs to another sender's message; leave 'id' out and the bus "
                "makes a fresh one (use metadata.dedup_key to make retries safe)",
                id=taken,
            )
        if admitted is not None and admitted.retry_as:
            prepared, admitted = self._retry_as(prepared, admitted)
        duplicates = _duplicates(admitted, len(prepared))
        fresh = [p for p, dup in zip(prepared, duplicates, strict=True) if dup is None]
        try:
            self._publish_all(fresh, batch)
        except _Unsent as unsent:
            self._undo(unsent, revoke=admitted is not None)
            raise unsent.error from unsent.error.__cause__
        repeatable = [p.record for p in fresh if p.record.may_repeat]
        if admitted is not None and repeatable:
            try:
                self.runtime.admission.commit(repeatable)
            except BusUnavailable as exc:
                # Published all the same; a retry of these may be delivered twice.
                logger.warning("dedup records left pending: %s", exc)
        return _receipts(prepared, duplicates)

    def _retry_as(
        self, prepared: list[Prepared], admitted: Admitted
    ) -> tuple[list[Prepared], Admitted]:
        """Resends, under its id, a message whose earlier sender died between admission and
        the broker's confirm (see scripts.ADMIT): if both copies reach a worker, delivery
        is idempotent per id."""
        prepared = list(prepared)
        for i, earlier in admitted.retry_as.items():
            prepared[i] = self.prepare(prepared[i].message.model_copy(update={"id": earlier}))
        again = [prepared[i] for i in admitted.retry_as]
        second = self.runtime.admission.admit([p.record for p in again], self._audit(again))
        duplicates = list(admitted.duplicates)
        for n, i in enumerate(admitted.retry_as):
            # Still pending under another id: a third sender is at it; let it be.
            duplicates[i] = second.duplicates[n] or second.retry_as.get(n)
        return prepared, Admitted(duplicates)

    def _send_beside(self, prepared: list[Prepared], batch: bool) -> list[Receipt]:
        """Nothing can refuse these: admission goes out first and is read after the
        publish, so its round trip overlaps the broker's."""
        pending: PendingAdmission | None
        try:
            pending = self.runtime.admission.admit_beside(
                [p.record for p in prepared], self._audit(prepared)
            )
        except BusUnavailable as exc:
            _warn_degraded(exc)
            pending = None
        try:
            self._publish_all(prepared, batch)
        except _Unsent as unsent:
            admitted = _settle(pending)
            self._undo(unsent, revoke=admitted is not None)
            raise unsent.error from unsent.error.__cause__
        return _receipts(prepared, _duplicates(_settle(pending), len(prepared)))

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

    def _undo(self, unsent: _Unsent, *, revoke: bool) -> None:
        """Nothing half-done: what the broker did not take is no longer `queued`."""
        if revoke:
            self.runtime.admission.revoke([p.record for p in unsent.prepared])
        self.guard.store_audits(self._audit(unsent.prepared, "failed", error=unsent.error.code))

    def _publish_all(self, prepared: list[Prepared], batch: bool) -> None:
        """One task per message, or per priority for a batch; raises _Unsent with what is
        left when the broker refuses one."""
        groups: dict[str, list[Prepared]] = defaultdict(list)
        for p in prepared:
            groups[p.message.priority.queue if batch else p.message.id].append(p)
        pending = list(groups.values())
        while pending:
            try:
                self._publish(pending[0], batch)
            except BusError as exc:
                raise _Unsent([p for group in pending for p in group], exc) from exc
            pending.pop(0)

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
        self.runtime.broker.publish(
            DELIVER_TASK,
            [group[0].record.wire],
            queue=first.priority.queue,
            task_id=first.id,
            expiration=first.metadata.ttl,
            headers={"trace_id": first.trace_id},
            summary=f"<message {first.id} {first.type.value} from {first.sender}>",
        )


def _settle(pending: PendingAdmission | None) -> Admitted | None:
    if pending is None:
        return None
    try:
        return pending.result()
    except BusUnavailable as exc:
        _warn_degraded(exc)
        return None


def _duplicates(admitted: Admitted | None, count: int) -> list[str | None]:
    """What each message duplicates; nothing is known without Redis (degraded send)."""
    return admitted.duplicates if admitted is not None else [None] * count


def _warn_degraded(exc: BusUnavailable) -> None:
    # Redis is down: the message still goes to RabbitMQ and waits there (the worker retries
    # until Redis is back and records its status then). Dedup and rate limiting cannot be
    # checked meanwhile.
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
