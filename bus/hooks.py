"""What the bus tells its observers, in one place: metrics, tracing and the audit trail.

The send, delivery and read paths say what happened (`hooks.sent`, `hooks.delivered`,
`hooks.read`...) and nothing else; which counter moves, which span is recorded and which
audit entry is written is decided here. (A send's own audit entries ride in its admission
call, bus.admission, so they are written or refused with it.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from bus import metrics, tracing

if TYPE_CHECKING:
    from bus.envelope import Envelope
    from bus.guard import Guard
    from bus.schema import Receipt, ReceivedMessage


class Hooks:
    def __init__(self, guard: Guard | None = None) -> None:
        self.guard = guard  # None in processes that keep no audit trail of their own

    # -- sending -----------------------------------------------------------------------------

    def sending(
        self, trace_id: str | None, **attributes: Any
    ) -> contextlib.AbstractContextManager[Any]:
        return tracing.span("bus.send", trace_id, **attributes)

    def sent(self, wires: Sequence[dict[str, Any]], receipts: Sequence[Receipt]) -> None:
        for wire, receipt in zip(wires, receipts, strict=True):
            metrics.count(wire, receipt.status.value)

    def refused(self, agent: str, action: str, target: str, **fields: Any) -> None:
        if self.guard is not None:
            self.guard.audit(action, agent, target, "denied", **fields)

    # -- delivering --------------------------------------------------------------------------

    def delivering(
        self, envelope: Envelope, attempts: int
    ) -> contextlib.AbstractContextManager[Any]:
        return tracing.span(
            "bus.deliver", envelope.trace_id, message_id=envelope.id, attempts=attempts
        )

    def delivered(self, envelope: Envelope, newly: int, latency: float) -> None:
        if newly:
            metrics.count(envelope.data, "delivered")
            metrics.observe_latency(envelope.type, latency)

    def retrying(self, envelope: Envelope) -> None:
        metrics.count(envelope.data, "retrying")
        metrics.ERRORS.labels("unavailable").inc()

    def died(self, envelope: Envelope | None, status: str, reason: str) -> None:
        if envelope is not None:
            metrics.count(envelope.data, status)
        metrics.ERRORS.labels(reason).inc()

    # -- reading -----------------------------------------------------------------------------

    def read(self, agent: str, messages: Iterable[ReceivedMessage]) -> None:
        for m in messages:
            metrics.MESSAGES.labels(m.type.value, m.metadata.priority.value, "read").inc()
            with tracing.span("bus.read", m.trace_id, message_id=m.id, reader=agent):
                pass  # one span per message read, joined to the message's trace

    def did(self, action: str, agent: str, targets: Sequence[str]) -> None:
        """An agent's action on each of `targets` (ack, subscribe, replay...), audited."""
        if action == "ack":
            metrics.MESSAGES.labels("any", "any", "acked").inc(len(targets))
        if self.guard is not None:
            self.guard.audit_each(action, agent, targets, "ok")
