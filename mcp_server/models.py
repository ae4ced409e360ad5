"""Tool inputs and results (pydantic): the JSON Schemas agents see in tools/list.

Every result carries `unread`, the caller's messages not yet read, so an agent that cannot
be pushed to (print mode, the SDK, clients without channels) learns of mail from whatever
tool it calls. Messages, receipts and statuses are the compact views of mcp_server/views.py
unless the caller asked for the full envelope.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from bus import options
from bus.health import Health, Stats
from bus.schema import AgentInfo, DeadLetter, ReceivedMessage
from mcp_server.views import Lean, MessageView, ReceiptView, StatusView, SubscriptionView

__all__ = [
    "AckResult",
    "AgentsResult",
    "BatchItem",
    "BatchResult",
    "DeadLettersResult",
    "HealthResult",
    "HistoryResult",
    "ReadResult",
    "ReplayResult",
    "RequestResult",
    "SendResult",
    "StatsResult",
    "StatusResult",
    "SubscriptionsResult",
    "UnsubscribeResult",
]

UNREAD = "your messages not yet read (read_messages gets them)"


def unread_field() -> Any:
    return Field(description=UNREAD)


class ReadResult(Lean):
    messages: list[MessageView | ReceivedMessage] = Field(
        description="leased, highest priority first; ack them with ack_messages"
    )
    count: int
    unread: int = unread_field()


class HistoryResult(Lean):
    agent: str | None = Field(default=None, description="whose history, when not yours")
    messages: list[MessageView | ReceivedMessage] = Field(description="newest first")
    count: int
    unread: int = unread_field()


class SendResult(ReceiptView):
    unread: int = unread_field()


class StatusResult(StatusView):
    unread: int = unread_field()


class AckResult(Lean):
    acked: int = Field(description="how many of the ids were acknowledged")
    not_found: list[str] | None = Field(default=None, description="ids not in your inbox")
    note: str | None = None
    unread: int = unread_field()


class SubscriptionsResult(Lean):
    subscriptions: list[SubscriptionView]
    unread: int = unread_field()


class UnsubscribeResult(Lean):
    removed: int
    unread: int = unread_field()


class RequestResult(Lean):
    request_id: str = Field(description="id of the request sent; check it later if timed out")
    status: Literal["answered", "timeout"]
    response: MessageView | None = None
    note: str | None = None
    unread: int = unread_field()


if TYPE_CHECKING:  # generated from bus.options.SendOptions (one declaration of the options)

    class BatchItem(BaseModel): ...

else:
    BatchItem = options.item_model(
        "BatchItem", options.MCP_BATCH_ITEM, "One message of a batch (the sender is always you)."
    )


class BatchResult(Lean):
    receipts: list[ReceiptView]
    unread: int = unread_field()


class AgentsResult(Lean):
    agents: list[AgentInfo]
    unread: int = unread_field()


class DeadLettersResult(Lean):
    dead_letters: list[DeadLetter]
    count: int
    unread: int = unread_field()


class ReplayResult(Lean):
    replayed: list[str]
    unread: int = unread_field()


class HealthResult(Health):
    unread: int = unread_field()


class StatsResult(Stats):
    unread: int = unread_field()
