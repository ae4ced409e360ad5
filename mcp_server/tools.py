"""The MCP tools: thin adapters that take the caller's identity, call the bus, return models.

Profiles: `core` (8 tools, the default) and `full` (core + 7 operator tools). Errors become
tool errors with the bus's message; nothing here lets an agent act as another agent.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from bus.client import MessageBus
from bus.errors import BusError
from bus.handle import AgentHandle
from bus.health import Health, Stats
from bus.schema import MessageType, Priority, Receipt, compose
from mcp_server.models import (
    AckResult,
    AgentsResult,
    BatchItem,
    BatchResult,
    DeadLettersResult,
    HistoryResult,
    MessageStatus,
    ReadResult,
    ReplayResult,
    RequestResult,
    SubscriptionsResult,
    UnsubscribeResult,
)
from mcp_server.push import InboxEvents

P = ParamSpec("P")
T = TypeVar("T")

CORE_TOOLS = (
    "send_message",
    "read_messages",
    "ack_messages",
    "subscribe",
    "unsubscribe",
    "get_history",
    "message_status",
    "request",
)
FULL_TOOLS = CORE_TOOLS + (
    "send_batch",
    "list_subscriptions",
    "list_agents",
    "list_dead_letters",
    "replay_dead_letters",
    "health",
    "bus_stats",
)
PROFILES = {"core": CORE_TOOLS, "full": FULL_TOOLS}

Identify = Callable[[Context], str]


class BusTools:
    def __init__(self, bus: MessageBus, events: InboxEvents, identify: Identify) -> None:
        self.bus = bus
        self.events = events
        self.identify = identify

    def handle(self, ctx: Context) -> AgentHandle:
        """The caller's identity-bound handle: every tool acts through it."""
        return self.bus.as_agent(self.identify(ctx), front_door=True)

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Runs a bus call off the event loop; bus errors become tool errors."""
        try:
            return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))
        except BusError as exc:
            raise ToolError(_explain(exc)) from None

    def message(
        self,
        sender: str,
        *,
        to: str | None,
        topic: str | None,
        broadcast: bool,
        type: MessageType,
        payload: Any,
        priority: Priority,
        ttl_seconds: float | None,
        **options: Any,
    ) -> dict[str, Any]:
        if broadcast and (to or topic):
            raise ToolError("broadcast goes to everyone: leave `to` and `topic` empty")
        if not broadcast and not to and not topic:
            raise ToolError("say where it goes: `to` (an agent id), `topic`, or broadcast=true")
        return compose(
            sender,
            to=to,
            topic=topic,
            broadcast=broadcast,
            type=type.value,
            payload=payload,
            priority=priority.value,
            ttl=ttl_seconds,
            **options,
        )

    async def read(self, me: AgentHandle, limit: int, wait_seconds: float) -> ReadResult:
        deadline = time.monotonic() + wait_seconds
        agent = me.agent
        while True:
            messages = await self.call(me.read, limit=limit, wait=0)
            remaining = deadline - time.monotonic()
            if messages or remaining <= 0:
                return ReadResult(messages=messages, count=len(messages))
            # Waits on the shared event listener: no thread is held while waiting.
            await self.events.wait_inbox(agent, min(remaining, 5.0))


def _explain(exc: BusError) -> str:
    if exc.code == "rate_limited":
        return f"{exc.message} (retry_after={exc.fields.get('retry_after')})"
    return exc.message


def register_tools(server: MCPServer, tools: BusTools, profile: str) -> None:
    if profile not in PROFILES:
        raise ValueError(f"unknown tool profile {profile!r}; one of {', '.join(PROFILES)}")
    wanted = set(PROFILES[profile])
    me = tools.handle

    def tool(fn: Callable[..., Any]) -> Callable[..., Any]:
        if fn.__name__ in wanted:
            server.tool(name=fn.__name__, description=(fn.__doc__ or "").strip())(fn)
        return fn

    @tool
    async def send_message(
        ctx: Context,
        to: str | None = Field(default=None, description="recipient agent id, e.g. 'bob'"),
        topic: str | None = Field(
            default=None,
            description="topic: delivered to its "
            "subscribers when `to` is empty (a label when `to` is set)",
        ),
        broadcast: bool = Field(default=False, description="send to every agent but you"),
        payload: Any = Field(default=None, description="any JSON value"),
        type: MessageType = Field(default=MessageType.event, description="message type"),
        priority: Priority = Field(default=Priority.normal),
        ttl_seconds: float | None = Field(
            default=None, gt=0, description="never delivered after this many seconds"
        ),
        correlation_id: str | None = Field(
            default=None, description="when answering: the request's id"
        ),
        reply_to: str | None = Field(default=None, description="where responses should go"),
        dedup_key: str | None = Field(
            default=None,
            description="idempotency key: a retry with the same key is not delivered twice",
        ),
        encrypted: bool = Field(default=False, description="encrypt the payload at rest"),
    ) -> Receipt:
        """Send a message to one agent (`to`), to a topic's subscribers (`topic`), or to
        everyone (`broadcast`). Returns the message id and its status ("queued")."""
        handle = me(ctx)
        message = tools.message(
            handle.agent,
            to=to,
            topic=topic,
            broadcast=broadcast,
            type=type,
            payload=payload,
            priority=priority,
            ttl_seconds=ttl_seconds,
            correlation_id=correlation_id,
            reply_to=reply_to,
            dedup_key=dedup_key,
            encrypted=encrypted,
        )
        return await tools.call(handle.send, message)

    @tool
    async def read_messages(
        ctx: Context,
        limit: int = Field(default=10, ge=1, le=500, description="at most this many"),
        wait_seconds: float = Field(
            default=0, ge=0, le=60, description="wait up to this long for the first message"
        ),
    ) -> ReadResult:
        """Read your inbox: highest priority first, oldest first within a priority. Messages
        are leased, not removed: call ack_messages with their ids when done, or they come
        back after the visibility timeout."""
        return await tools.read(me(ctx), limit, wait_seconds)

    @tool
    async def ack_messages(
        ctx: Context, ids: list[str] = Field(description="ids of messages you read")
    ) -> AckResult:
        """Acknowledge messages you have handled so they are not delivered again."""
        return await tools.call(me(ctx).ack, ids)

    @tool
    async def subscribe(
        ctx: Context,
        topics: list[str] = Field(description="topic names, e.g. ['tasks/new']"),
        types: list[MessageType] | None = Field(default=None, description="only these types"),
        priorities: list[Priority] | None = Field(
            default=None, description="only these priorities"
        ),
    ) -> SubscriptionsResult:
        """Subscribe to topics; optional filters keep only some message types/priorities."""
        subs = await tools.call(
            me(ctx).subscribe,
            topics,
            types=[t.value for t in types] if types else None,
            priorities=[p.value for p in priorities] if priorities else None,
        )
        return SubscriptionsResult(subscriptions=subs)

    @tool
    async def unsubscribe(
        ctx: Context, topics: list[str] = Field(description="topics to leave")
    ) -> UnsubscribeResult:
        """Stop receiving messages published to these topics."""
        return UnsubscribeResult(removed=await tools.call(me(ctx).unsubscribe, topics))

    @tool
    async def get_history(
        ctx: Context,
        limit: int = Field(default=20, ge=1, le=1000),
        since: datetime | None = Field(default=None, description="only after this time"),
        type: MessageType | None = Field(default=None, description="only this type"),
        agent_id: str | None = Field(
            default=None, description="another agent's history (admins only)"
        ),
    ) -> HistoryResult:
        """Messages you sent or received, newest first."""
        handle = me(ctx)
        messages = await tools.call(
            handle.history,
            limit=limit,
            since=since,
            type=type.value if type else None,
            of=agent_id,
        )
        agent = agent_id or handle.agent
        return HistoryResult(agent=agent, messages=messages, count=len(messages))

    @tool
    async def message_status(
        ctx: Context, id: str = Field(description="message id from send_message")
    ) -> MessageStatus:
        """Delivery status: queued, delivered, read, acked, retrying, dead, expired..."""
        return await tools.call(me(ctx).status, id)

    @tool
    async def request(
        ctx: Context,
        to: str = Field(description="agent id that should answer"),
        payload: Any = Field(default=None, description="any JSON value"),
        timeout_seconds: float = Field(default=30, gt=0, le=300),
        type: MessageType = Field(default=MessageType.request),
        priority: Priority = Field(default=Priority.normal),
    ) -> RequestResult:
        """Send a request and wait for the response whose correlation_id is its id. On
        timeout you get the request id back to check later."""
        handle = me(ctx)
        prepared = tools.message(
            handle.agent,
            to=to,
            topic=None,
            broadcast=False,
            type=type,
            payload=payload,
            priority=priority,
            ttl_seconds=None,
            reply_to=handle.agent,
        )
        prepared["id"] = request_id = str(uuid.uuid4())
        await tools.events.start()
        waiter = tools.events.reply_waiter(request_id)
        try:
            await tools.call(handle.send, prepared)
            deadline = time.monotonic() + timeout_seconds
            while True:
                response = await tools.call(handle.response_to, request_id)
                if response is not None:
                    return RequestResult(
                        request_id=request_id, status="answered", response=response
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return RequestResult(request_id=request_id, status="timeout")
                waiter.clear()
                try:
                    await asyncio.wait_for(waiter.wait(), min(remaining, 5.0))
                except TimeoutError:
                    pass
        finally:
            tools.events.drop_reply_waiter(request_id, waiter)

    @tool
    async def send_batch(
        ctx: Context, messages: list[BatchItem] = Field(description="up to 500 messages")
    ) -> BatchResult:
        """Send many messages at once; all are validated before any is sent."""
        handle = me(ctx)
        batch = [
            tools.message(
                handle.agent,
                to=m.to,
                topic=m.topic,
                broadcast=False,
                type=m.type,
                payload=m.payload,
                priority=m.priority,
                ttl_seconds=m.ttl_seconds,
                correlation_id=m.correlation_id,
                dedup_key=m.dedup_key,
            )
            for m in messages
        ]
        return BatchResult(receipts=await tools.call(handle.send_batch, batch))

    @tool
    async def list_subscriptions(ctx: Context) -> SubscriptionsResult:
        """Your topic subscriptions and their filters."""
        return SubscriptionsResult(subscriptions=await tools.call(me(ctx).subscriptions))

    @tool
    async def list_agents(ctx: Context) -> AgentsResult:
        """Every registered agent with its inbox depth and when it was last seen."""
        return AgentsResult(agents=await tools.call(me(ctx).agents))

    @tool
    async def list_dead_letters(
        ctx: Context, limit: int = Field(default=50, ge=1, le=1000)
    ) -> DeadLettersResult:
        """Messages that could not be delivered, with the reason (admins only)."""
        letters = await tools.call(me(ctx).dead_letters, limit)
        return DeadLettersResult(dead_letters=letters, count=len(letters))

    @tool
    async def replay_dead_letters(
        ctx: Context,
        ids: list[str] | None = Field(default=None, description="dead letters to replay"),
        all: bool = Field(default=False, description="replay every dead letter"),
    ) -> ReplayResult:
        """Send dead letters back to their priority queue (admins only)."""
        if not ids and not all:
            raise ToolError("give `ids` of dead letters to replay, or all=true")
        replayed = await tools.call(me(ctx).replay_dead_letters, ids, all=all)
        return ReplayResult(replayed=replayed)

    @tool
    async def health(ctx: Context) -> Health:
        """Whether Redis, the broker and the workers are up, and the dead-letter depth."""
        return await tools.call(me(ctx).health)

    @tool
    async def bus_stats(ctx: Context) -> Stats:
        """Queue depths, agents, topics, subscriptions and inbox depths."""
        return await tools.call(me(ctx).stats)
