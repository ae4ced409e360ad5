"""The MCP tools: thin adapters that take the caller's identity, call the bus, return models.

Profiles: `core` (8 tools, the default) and `full` (core + 7 operator tools). Errors become
tool errors with the bus's message; nothing here lets an agent act as another agent.
Results are the compact views of mcp_server/views.py with the caller's `unread` count.
"""

from __future__ import annotations

import inspect
import typing
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from bus import options
from bus.client import MessageBus
from bus.deadletters import MAX_LISTED
from bus.errors import BusError
from bus.handle import AgentHandle
from bus.longpoll import apoll
from bus.options import parse_options
from bus.schema import MessageType, Priority, ReceivedMessage
from mcp_server.models import (
    AckResult,
    AgentsResult,
    BatchItem,
    BatchResult,
    DeadLettersResult,
    HealthResult,
    HistoryResult,
    ReadResult,
    ReplayResult,
    RequestResult,
    SendResult,
    StatsResult,
    StatusResult,
    SubscriptionsResult,
    UnsubscribeResult,
)
from mcp_server.push import InboxEvents
from mcp_server.toolschema import description, lean_schema
from mcp_server.views import (
    MessageView,
    message_view,
    receipt_view,
    status_view,
    subscription_view,
)

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

# read_messages waits this long by default: long enough that a model polling in a loop
# does not spin, short enough to return before the common 30 s client request timeouts.
DEFAULT_WAIT_SECONDS = 20.0

Identify = Callable[[Context], str]


class BusTools:
    def __init__(self, bus: MessageBus, events: InboxEvents, identify: Identify) -> None:
        self.bus = bus
        self.events = events
        self.identify = identify

    def handle(self, ctx: Context) -> AgentHandle:
        """The caller's identity-bound handle: every tool acts through it."""
        return self.bus.as_agent(self.identify(ctx), front_door=True)

    def still(self, ctx: Context, agent: str) -> None:
        """Before each look of a call that waits (a read's long poll, a request's answer):
        a token revoked meanwhile ends the call there, as it ends a listen stream, and
        nothing is leased or taken for it."""
        try:
            now = self.identify(ctx)
        except ToolError:
            now = None
        if now != agent:
            raise ToolError(f"the token of {agent} was revoked while this call waited")

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Runs a bus call off the event loop; bus errors become tool errors."""
        try:
            return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))
        except BusError as exc:
            raise ToolError(_explain(exc)) from None

    @staticmethod
    def message(given: dict[str, Any], sender: str) -> dict[str, Any]:
        """The message a tool's arguments (SendOptions' fields) describe, from `sender`."""
        try:
            return parse_options(given).message(sender)
        except BusError as exc:
            raise ToolError(_explain(exc)) from None

    async def counted(self, agent: str, fn: Callable[[], T]) -> tuple[T, int]:
        """`fn()` and then the caller's unread count, in one trip to a worker thread (a
        trip costs the event loop a hand-off each way: one per call, not two)."""
        return await self.call(lambda: (fn(), self.bus.as_agent(agent).unread()))

    async def read(self, ctx: Context, limit: int, wait_seconds: float, full: bool) -> ReadResult:
        me = self.handle(ctx)
        agent = me.agent
        unread = 0

        async def look() -> list[ReceivedMessage]:
            nonlocal unread
            self.still(ctx, agent)
            found, unread = await self.counted(agent, lambda: me.read(limit=limit, wait=0))
            return found

        if wait_seconds <= 0:
            messages = await look()
        else:  # waits on the shared event listener (no thread held), watched from before
            # the first look
            async with self.events.watching_inbox(agent) as wait:
                messages = await apoll(look, wait, wait_seconds)
        return ReadResult(
            messages=self.views(messages, agent, full), count=len(messages), unread=unread
        )

    async def unread(self, agent: str) -> int:
        """The authenticated caller's own unread count."""
        return await self.call(self.bus.as_agent(agent).unread)

    @staticmethod
    def views(
        messages: list[ReceivedMessage], reader: str, full: bool
    ) -> list[MessageView | ReceivedMessage]:
        if full:
            return list(messages)
        return [message_view(m, reader) for m in messages]


def _explain(exc: BusError) -> str:
    """The bus's message, with the next step where its own words leave that out."""
    hint = _NEXT_STEP.get(exc.code, "")
    return exc.message if not hint or "retry" in exc.message else exc.message + hint


_NEXT_STEP = {
    "not_found": "; check the id (send_message and read_messages return ids)",
    "unavailable": "; retry in a few seconds",
    "timeout": "; call message_status with the id to see where it is",
}


def keep_payload_strings(metadata: Any) -> None:
    """The SDK parses a string argument as JSON when its parameter is not typed `str` (some
    clients send lists as JSON text). A payload is any JSON value, a string included: the
    payload "{\"a\": 1}" must arrive as that string, not as an object. The other arguments
    keep the SDK's leniency."""
    parse = metadata.pre_parse_json

    def pre_parse_json(data: dict[str, Any]) -> dict[str, Any]:
        parsed: dict[str, Any] = parse(data)
        if "payload" in data:
            parsed["payload"] = data["payload"]
        return parsed

    object.__setattr__(metadata, "pre_parse_json", pre_parse_json)  # a pydantic model's


def takes(
    names: tuple[str, ...],
    *,
    required: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Gives a tool `fn(ctx, ..., **given)` the send options `names` as its arguments: the
    schema agents see is generated from bus.options.SendOptions (one declaration)."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(fn)
        signature = inspect.signature(fn)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in signature.parameters.values()
            if p.kind is not p.VAR_KEYWORD
        ]
        generated = options.parameters(names, required=required, defaults=defaults)
        fn.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*own, *generated], return_annotation=hints.get("return")
        )
        hints.pop("given", None)
        fn.__annotations__ = {**hints, **{p.name: p.annotation for p in generated}}
        return fn

    return decorate


def register_tools(server: MCPServer, tools: BusTools, profile: str) -> None:
    if profile not in PROFILES:
        raise ValueError(f"unknown tool profile {profile!r}; one of {', '.join(PROFILES)}")
    wanted = set(PROFILES[profile])
    me = tools.handle

    def tool(fn: Callable[..., Any]) -> Callable[..., Any]:
        if fn.__name__ in wanted:
            server.tool(name=fn.__name__, description=description(fn.__doc__))(fn)
            registered = server._tool_manager.get_tool(fn.__name__)
            if registered is not None:  # what tools/list shows; calls validate as before
                registered.parameters = lean_schema(registered.parameters)
                keep_payload_strings(registered.fn_metadata)
        return fn

    @tool
    @takes(options.MCP_SEND)
    async def send_message(ctx: Context, **given: Any) -> SendResult:
        """Send a message to one agent (`to`), a topic's subscribers (`topic`), or everyone
        (`broadcast`). Returns its id and status."""
        handle = me(ctx)
        message = tools.message(given, handle.agent)
        sent, unread = await tools.counted(handle.agent, lambda: handle.send(message))
        return SendResult(**receipt_view(sent).model_dump(), unread=unread)

    @tool
    async def read_messages(
        ctx: Context,
        limit: int = Field(default=10, ge=1, le=500, strict=True, description="at most this many"),
        wait_seconds: float = Field(
            default=DEFAULT_WAIT_SECONDS,
            ge=0,
            le=60,
            strict=True,
            allow_inf_nan=False,
            description="wait up to this long for the first message (0: do not wait)",
        ),
        full: bool = Field(default=False, description="whole envelopes"),
    ) -> ReadResult:
        """Read your inbox, highest priority first; returns as soon as mail is there.
        Messages are leased: ack_messages their ids when done, or they come back later."""
        return await tools.read(ctx, limit, wait_seconds, full)

    @tool
    async def ack_messages(
        ctx: Context, ids: list[str] = Field(description="ids of messages you read")
    ) -> AckResult:
        """Acknowledge messages you have handled so they are not delivered again."""
        handle = me(ctx)
        result, unread = await tools.counted(handle.agent, lambda: handle.ack(ids))
        missing = result.not_found or None
        return AckResult(
            acked=len(result.acked),
            not_found=missing,
            note="not in your inbox: acked already, or not an id read_messages gave you"
            if missing
            else None,
            unread=unread,
        )

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
        handle = me(ctx)
        subs, unread = await tools.counted(
            handle.agent,
            lambda: handle.subscribe(
                topics,
                types=[t.value for t in types] if types else None,
                priorities=[p.value for p in priorities] if priorities else None,
            ),
        )
        return SubscriptionsResult(
            subscriptions=[subscription_view(s) for s in subs], unread=unread
        )

    @tool
    async def unsubscribe(
        ctx: Context, topics: list[str] = Field(description="topics to leave")
    ) -> UnsubscribeResult:
        """Stop receiving messages published to these topics."""
        handle = me(ctx)
        removed, unread = await tools.counted(handle.agent, lambda: handle.unsubscribe(topics))
        return UnsubscribeResult(removed=removed, unread=unread)

    @tool
    async def get_history(
        ctx: Context,
        limit: int = Field(default=20, ge=1, le=1000, strict=True),
        since: datetime | None = Field(default=None, description="only after this time"),
        type: MessageType | None = Field(default=None, description="only this type"),
        agent_id: str | None = Field(
            default=None, description="another agent's history (admins only)"
        ),
        full: bool = Field(default=False, description="whole envelopes"),
    ) -> HistoryResult:
        """Messages you sent or received, newest first."""
        handle = me(ctx)
        messages, unread = await tools.counted(
            handle.agent,
            lambda: handle.history(
                limit=limit, since=since, type=type.value if type else None, of=agent_id
            ),
        )
        agent = agent_id or handle.agent
        return HistoryResult(
            agent=agent if agent != handle.agent else None,
            messages=tools.views(messages, agent, full),
            count=len(messages),
            unread=unread,
        )

    @tool
    async def message_status(
        ctx: Context, id: str = Field(description="message id from send_message")
    ) -> StatusResult:
        """Delivery status: queued, delivered, read, acked, retrying, dead, expired..."""
        handle = me(ctx)
        found, unread = await tools.counted(handle.agent, lambda: handle.status(id))
        return StatusResult(**status_view(found).model_dump(), unread=unread)

    @tool
    @takes(options.MCP_REQUEST, required=("to",), defaults={"type": MessageType.request})
    async def request(
        ctx: Context,
        timeout_seconds: float = Field(default=30, gt=0, le=300, strict=True, allow_inf_nan=False),
        **given: Any,
    ) -> RequestResult:
        """Send a request and wait for the response whose correlation_id is its id. On
        timeout you get the request id back to check later."""
        handle = me(ctx)
        prepared = tools.message({**given, "reply_to": handle.agent}, handle.agent)
        prepared["id"] = request_id = str(uuid.uuid4())

        asked = prepared.get("to") if prepared.get("to") != "*" else None

        def answer() -> tuple[ReceivedMessage, int] | None:
            tools.still(ctx, handle.agent)
            response = handle.response_to(request_id, asked)
            return None if response is None else (response, handle.unread())

        # Two trips to a worker thread, the send and the answer with the unread count:
        # each trip costs the event loop a hand-off each way. The answer is looked for once
        # woken (its wake-up was watched from before the send) or at each step.
        async with tools.events.watching_reply(handle.agent, request_id) as woken:
            await tools.call(handle.send, prepared)
            answered = await apoll(
                lambda: tools.call(answer), woken, timeout_seconds, look_first=False
            )
        if answered is None:
            return RequestResult(
                request_id=request_id,
                status="timeout",
                note="no answer yet: a late one lands in your inbox (read_messages)",
                unread=await tools.unread(handle.agent),
            )
        response, unread = answered
        return RequestResult(
            request_id=request_id,
            status="answered",
            response=message_view(response, handle.agent),
            unread=unread,
        )

    @tool
    async def send_batch(
        ctx: Context,
        messages: list[BatchItem] = Field(
            description=f"up to {tools.bus.settings.max_batch} messages",
            max_length=tools.bus.settings.max_batch,
        ),
    ) -> BatchResult:
        """Send many messages at once; all are validated before any is sent."""
        handle = me(ctx)
        batch = [tools.message(m.model_dump(), handle.agent) for m in messages]
        receipts, unread = await tools.counted(handle.agent, lambda: handle.send_batch(batch))
        return BatchResult(receipts=[receipt_view(r) for r in receipts], unread=unread)

    @tool
    async def list_subscriptions(ctx: Context) -> SubscriptionsResult:
        """Your topic subscriptions and their filters."""
        handle = me(ctx)
        subs, unread = await tools.counted(handle.agent, handle.subscriptions)
        return SubscriptionsResult(
            subscriptions=[subscription_view(s) for s in subs], unread=unread
        )

    @tool
    async def list_agents(ctx: Context) -> AgentsResult:
        """Every registered agent with its inbox depth and when it was last seen."""
        handle = me(ctx)
        agents, unread = await tools.counted(handle.agent, handle.agents)
        return AgentsResult(agents=agents, unread=unread)

    @tool
    async def list_dead_letters(
        ctx: Context, limit: int = Field(default=50, ge=1, le=MAX_LISTED, strict=True)
    ) -> DeadLettersResult:
        """Messages that could not be delivered, with the reason (admins only)."""
        handle = me(ctx)
        letters, unread = await tools.counted(handle.agent, lambda: handle.dead_letters(limit))
        return DeadLettersResult(dead_letters=letters, count=len(letters), unread=unread)

    @tool
    async def replay_dead_letters(
        ctx: Context,
        ids: list[str] | None = Field(default=None, description="dead letters to replay"),
        all: bool = Field(default=False, description="replay every dead letter"),
    ) -> ReplayResult:
        """Send dead letters back to their priority queue (admins only)."""
        if not ids and not all:
            raise ToolError("give `ids` of dead letters to replay, or all=true")
        handle = me(ctx)
        replayed, unread = await tools.counted(
            handle.agent, lambda: handle.replay_dead_letters(ids, all=all)
        )
        return ReplayResult(replayed=replayed, unread=unread)

    @tool
    async def health(ctx: Context) -> HealthResult:
        """Whether Redis, the broker and the workers are up, and the dead-letter depth."""
        handle = me(ctx)
        found = await tools.call(handle.health)
        try:
            unread = await tools.unread(handle.agent)
        except ToolError:
            unread = 0  # Redis is down: health says so; there is nothing to count
        return HealthResult(**found.model_dump(), unread=unread)

    @tool
    async def bus_stats(ctx: Context) -> StatsResult:
        """Queue depths, agents, topics, subscriptions and inbox depths."""
        handle = me(ctx)
        found, unread = await tools.counted(handle.agent, handle.stats)
        return StatsResult(**found.model_dump(), unread=unread)
