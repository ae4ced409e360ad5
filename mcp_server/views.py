"""What a model is shown: compact views of messages, receipts, statuses and subscriptions.

A model pays for every character of a tool result, on every later turn. The compact view
keeps what an agent needs to act on a message and nothing a bus keeps for itself:

    {"id":"…","from":"alice","type":"request","priority":"high","time":"2026-11-25T10:00:00Z",
     "payload":…,"correlation_id":"…","topic":"…","redelivered":true}

- no version, signature, trace id, lease, `verified` flag or metadata defaults;
- defaults are left out: `type` "event" and `priority` "normal" are not written;
- `to` only when it is not the reader (a broadcast says so by its type), `reply_to` only
  when it is not the sender (answering the sender is what a reply does anyway);
- `time` to the second (read order is the list's order); `redelivered` only when true;
- `error` only when the payload was withheld (a failed check), with the reason.

The full envelope is one argument away (`full: true` on read_messages / get_history) and
in the history resource. Measured with the real Claude Code: a read of one message with a
31-character payload went from 704 characters as the model is shown it to 175, and per
message over 50, beyond the payload, from 649 to 109 (bench/RESULTS.md).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import AliasChoices, BaseModel, Field, model_serializer

from bus.schema import (
    BROADCAST,
    MessageStatus,
    MessageType,
    Priority,
    Receipt,
    ReceivedMessage,
    Subscription,
)


class Lean(BaseModel):
    """A model whose JSON leaves out every field that is None."""

    @model_serializer(mode="wrap")
    def _drop_nones(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


class MessageView(Lean):
    id: str
    # "from" in JSON, both ways (the output schema is a validation schema).
    sender: str = Field(validation_alias=AliasChoices("from", "sender"), serialization_alias="from")
    to: str | None = None
    topic: str | None = None
    type: str | None = Field(default=None, description="left out when 'event'")
    priority: str | None = Field(default=None, description="left out when 'normal'")
    time: str | None = None
    payload: Any = None
    correlation_id: str | None = None
    reply_to: str | None = None
    headers: dict[str, str] | None = None
    redelivered: bool | None = Field(default=None, description="read before, not acked")
    error: str | None = Field(default=None, description="why the payload is withheld")


class ReceiptView(Lean):
    id: str
    status: str
    duplicate_of: str | None = None


class StatusView(Lean):
    id: str
    status: str
    time: str | None = Field(default=None, description="when it reached this status")
    recipients: int | None = None
    acks: int | None = Field(default=None, description="recipients that acked, when several")
    attempts: int | None = Field(default=None, description="when more than one")
    reason: str | None = None
    error: str | None = None


class SubscriptionView(Lean):
    topic: str
    types: list[str] | None = None
    priorities: list[str] | None = None


def stamp(value: datetime | None) -> str | None:
    """RFC 3339 UTC to the second: 2026-11-25T10:00:00Z."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def message_view(message: ReceivedMessage, reader: str) -> MessageView:
    """The compact view of `message` as `reader` (the caller) sees it."""
    to = message.to
    if to == reader or (to == BROADCAST and message.type is MessageType.broadcast):
        to = None
    reply_to = message.reply_to if message.reply_to != message.sender else None
    priority = message.metadata.priority
    return MessageView(
        id=message.id,
        sender=message.sender,
        to=to,
        topic=message.topic,
        type=None if message.type is MessageType.event else message.type.value,
        priority=None if priority is Priority.normal else priority.value,
        time=stamp(message.timestamp),
        payload=message.payload,
        correlation_id=message.correlation_id,
        reply_to=reply_to,
        headers=message.metadata.headers or None,
        redelivered=True if message.delivery_count > 1 else None,
        error=message.decode_error,
    )


def receipt_view(receipt: Receipt) -> ReceiptView:
    return ReceiptView(
        id=receipt.id, status=receipt.status.value, duplicate_of=receipt.duplicate_of
    )


def status_view(status: MessageStatus) -> StatusView:
    stamps = status.timestamps
    when = stamps.get(status.status.value) or (max(stamps.values()) if stamps else None)
    return StatusView(
        id=status.id,
        status=status.status.value,
        time=stamp(when),
        recipients=status.recipients,
        acks=status.acks if (status.recipients or 0) > 1 else None,
        attempts=status.attempts if status.attempts > 1 else None,
        reason=status.reason,
        error=status.error,
    )


def subscription_view(subscription: Subscription) -> SubscriptionView:
    return SubscriptionView(
        topic=subscription.topic,
        types=[t.value for t in subscription.types] if subscription.types else None,
        priorities=[p.value for p in subscription.priorities] if subscription.priorities else None,
    )
