"""Tool inputs and results (pydantic): the JSON Schemas agents see in tools/list."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from bus.schema import (
    AckResult,
    AgentInfo,
    DeadLetter,
    MessageStatus,
    MessageType,
    Priority,
    Receipt,
    ReceivedMessage,
    Subscription,
)

__all__ = [
    "AckResult",
    "AgentInfo",
    "AgentsResult",
    "BatchItem",
    "BatchResult",
    "DeadLettersResult",
    "HistoryResult",
    "MessageStatus",
    "ReadResult",
    "Receipt",
    "ReplayResult",
    "RequestResult",
    "SubscriptionsResult",
    "UnsubscribeResult",
]


class ReadResult(BaseModel):
    messages: list[ReceivedMessage] = Field(
        description="leased messages, highest priority first; ack them with ack_messages"
    )
    count: int


class HistoryResult(BaseModel):
    agent: str
    messages: list[ReceivedMessage] = Field(description="newest first")
    count: int


class SubscriptionsResult(BaseModel):
    subscriptions: list[Subscription]


class UnsubscribeResult(BaseModel):
    removed: int


class RequestResult(BaseModel):
    request_id: str = Field(description="id of the request sent; check it later if timed out")
    status: Literal["answered", "timeout"]
    response: ReceivedMessage | None = None


class BatchItem(BaseModel):
    """One message of a batch (the sender is always you)."""

    to: str | None = Field(default=None, description="recipient agent id")
    topic: str | None = Field(default=None, description="topic (when no `to`)")
    type: MessageType = MessageType.event
    payload: Any = None
    priority: Priority = Priority.normal
    ttl_seconds: float | None = Field(default=None, gt=0)
    correlation_id: str | None = None
    dedup_key: str | None = None


class BatchResult(BaseModel):
    receipts: list[Receipt]


class AgentsResult(BaseModel):
    agents: list[AgentInfo]


class DeadLettersResult(BaseModel):
    dead_letters: list[DeadLetter]
    count: int


class ReplayResult(BaseModel):
    replayed: list[str]
