"""Building and running the MCP server (stdio for one agent, streamable HTTP for many)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypeVar

import anyio
import orjson
import pydantic
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.subscriptions import ListenHandler
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    CallToolResult,
    EmptyResult,
    SubscribeRequestParams,
    SubscriptionsListenRequestParams,
    SubscriptionsListenResult,
    TextContent,
    UnsubscribeRequestParams,
)
from mcp_types import Resource as MCPResource

from bus.client import MessageBus
from bus.errors import BusError
from bus.handle import AgentHandle
from bus.jsonview import to_json
from bus.settings import Settings
from bus.validation import describe
from mcp_server.identity import Identity
from mcp_server.push import InboxEvents, LegacySubscriptions, RedisSubscriptionBus
from mcp_server.tools import BusTools, register_tools

logger = logging.getLogger(__name__)

INSTRUCTIONS = """\
A message bus between agents; your id is fixed by your connection. send_message to an \
agent (`to`), a topic or everyone (broadcast); request asks and waits for the answer. \
Results count your `unread` mail. When a <channel> block from this server arrives, or \
unread > 0: read_messages, act on them, then ack_messages."""


AGENTS_URI = "message-bus://agents"
DEAD_LETTERS_URI = "message-bus://dead-letters"
LISTEN_STREAMS_PER_AGENT = 8
T = TypeVar("T")
# How often an open push stream checks that its caller's token still holds: a revoked
# token's listen stream ends, and its resources/subscribe notifications stop, within this.
CREDENTIAL_CHECK_SECONDS = 1.0


class BusServer(MCPServer[Any]):
    """MCPServer whose resources/list names each known agent's history, and whose static
    resources may see the caller (for admin-only ones)."""

    bus: MessageBus
    tools: BusTools
    context_resources: dict[str, Any]

    async def read_resource(self, uri: Any, context: Any = None) -> Any:
        handler = self.context_resources.get(str(uri))
        if handler is None:
            return await super().read_resource(uri, context)
        return [ReadResourceContents(content=await handler(context), mime_type="application/json")]

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        try:
            self._check_arguments(name, arguments)
            result = await super().call_tool(name, arguments, context)
        except ToolError as exc:
            raise ToolError(await self._with_unread(str(exc), context)) from None
        if isinstance(result, CallToolResult) and result.structured_content is not None:
            # Clients that show the model the text block see the same compact JSON as
            # structuredContent (Claude Code shows structuredContent), not an indented copy.
            text = orjson.dumps(result.structured_content).decode()
            result.content = [TextContent(type="text", text=text)]
        return result

    def _check_arguments(self, name: str, arguments: dict[str, Any]) -> None:
        """Refusals a model can act on: the SDK ignores unknown arguments (a misspelt one
        should be heard of) and reports bad values as pydantic's multi-line dump."""
        tool = self._tool_manager.get_tool(name)
        if tool is None:
            return
        known = set(tool.parameters.get("properties", {}))
        unknown = sorted(set(arguments) - known)
        if unknown:
            raise ToolError(
                f"unknown argument(s) {', '.join(unknown)} for {name}; "
                f"it takes: {', '.join(sorted(known)) or 'no arguments'}"
            )
        metadata = tool.fn_metadata
        try:
            metadata.arg_model.model_validate(metadata.pre_parse_json(arguments))
        except pydantic.ValidationError as exc:
            raise ToolError(f"bad arguments for {name}: {describe(exc)}") from None

    async def _with_unread(self, message: str, context: Any) -> str:
        """An error still tells the caller it has mail (when Redis can say so at once)."""
        try:
            count = await self.tools.unread(self.tools.identify(context))
        except (ToolError, BusError):
            return message
        return f"{message} (you have {count} unread: read_messages)" if count else message

    async def list_resources(self) -> list[Any]:
        resources = await super().list_resources()
        resources.append(
            MCPResource(
                uri=AGENTS_URI,
                name="agents",
                mime_type="application/json",
                description="registered agents with last seen (inbox depths: yours, or any "
                "if admin)",
            )
        )
        resources.append(
            MCPResource(
                uri=DEAD_LETTERS_URI,
                name="dead-letters",
                mime_type="application/json",
                description="undeliverable messages with their reasons (admins only)",
            )
        )
        try:
            agents = [a.id for a in await _to_thread(self.bus.agents)]
        except BusError:
            agents = []
        resources += [
            MCPResource(
                uri=f"message-bus://history/{agent}",
                name=f"history of {agent}",
                description=f"messages sent or received by {agent}, newest first",
                mime_type="application/json",
            )
            for agent in agents
        ]
        return resources


async def _to_thread(fn: Any, *args: Any) -> Any:
    return await anyio.to_thread.run_sync(lambda: fn(*args))


def _version() -> str:
    try:
        return version("agent-message-bus")
    except PackageNotFoundError:
        return "0+unknown"


def _json(value: Any) -> str:
    return to_json(value, indent=True).decode()


def build_server(
    settings: Settings, identity: Identity, profile: str = "core"
) -> tuple[BusServer, InboxEvents]:
    bus = MessageBus(settings)
    events = InboxEvents(settings.redis_url, bus.runtime.keys)
    server = BusServer(
        name="agent-message-bus",
        version=_version(),
        instructions=INSTRUCTIONS,
        subscriptions=RedisSubscriptionBus(events),
        token_verifier=identity.token_verifier,
        auth=identity.auth_settings,
        log_level="WARNING",
    )
    server.bus = bus
    server.context_resources = {}
    me = identity.agent_of
    server.tools = BusTools(bus, events, me)
    register_tools(server, server.tools, profile)
    _register_resources(server, bus, me)
    _register_legacy_subscribe(server, bus, events, me)
    return server, events


def _register_resources(server: MCPServer, bus: MessageBus, me: Any) -> None:
    def handle(ctx: Context) -> AgentHandle:
        return bus.as_agent(me(ctx), front_door=True)

    async def guarded(ctx: Context, fn: Any, *args: Any, **kwargs: Any) -> str:
        try:
            return _json(await _to_thread(lambda: fn(handle(ctx), *args, **kwargs)))
        except BusError as exc:
            raise ResourceError(exc.message) from None
        except ToolError as exc:
            raise ResourceError(str(exc)) from None

    @server.resource(
        "message-bus://history/{agent_id}",
        name="history",
        mime_type="application/json",
        description="an agent's messages, newest first (your own, or any if admin)",
    )
    async def history(agent_id: str, ctx: Context) -> str:
        return await guarded(ctx, AgentHandle.history, limit=100, of=agent_id)

    @server.resource(
        "message-bus://inbox/{agent_id}",
        name="inbox",
        mime_type="application/json",
        description="messages waiting in an inbox, in read order, not leased; "
        "subscribe to be told when mail arrives",
    )
    async def inbox(agent_id: str, ctx: Context) -> str:
        return await guarded(ctx, AgentHandle.inbox, limit=100, of=agent_id)

    async def agents(ctx: Context) -> str:
        return await guarded(ctx, AgentHandle.agents)

    async def dead_letters(ctx: Context) -> str:
        return await guarded(ctx, AgentHandle.dead_letters, 100)

    # Static resources get no Context in the SDK; these need the caller's identity (the
    # agents list shows other agents' inbox depths to admins only).
    server.context_resources[AGENTS_URI] = agents  # type: ignore[attr-defined]
    server.context_resources[DEAD_LETTERS_URI] = dead_letters  # type: ignore[attr-defined]


def _register_legacy_subscribe(
    server: MCPServer, bus: MessageBus, events: InboxEvents, me: Any
) -> None:
    """`resources/subscribe` for clients before 2026-07-28 (newer ones use listen)."""
    legacy = LegacySubscriptions(events)
    lowlevel = server._lowlevel_server  # the SDK's documented seam for extra handlers

    async def on_subscribe(ctx: Any, params: SubscribeRequestParams) -> EmptyResult:
        uri = str(params.uri)
        try:
            caller = _caller(ctx, me)
            bus.as_agent(caller, front_door=True).authorize_listen(uri)
            legacy.add(uri, ctx.session, _still_allowed(ctx, me, bus, [uri]), caller)
        except BusError as exc:
            raise MCPError(INVALID_PARAMS, exc.message) from None
        await events.start()
        return EmptyResult()

    async def on_unsubscribe(ctx: Any, params: UnsubscribeRequestParams) -> EmptyResult:
        legacy.remove(str(params.uri), ctx.session)
        return EmptyResult()

    lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, on_subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, on_unsubscribe)
    listen = ListenHandler(RedisSubscriptionBus(events))
    streams: Counter[str] = Counter()

    async def on_listen(
        ctx: Any, params: SubscriptionsListenRequestParams
    ) -> SubscriptionsListenResult:
        """`subscriptions/listen` (2026-07-28), each asked-for URI authorized first, and at
        most LISTEN_STREAMS_PER_AGENT open at once per agent (the SDK's limit is per
        process: one agent must not take every stream)."""
        handle = bus.as_agent(_caller(ctx, me), front_door=True)
        for uri in params.notifications.resource_subscriptions or ():
            try:
                await _to_thread(handle.authorize_listen, str(uri))
            except BusError as exc:
                raise MCPError(INVALID_PARAMS, exc.message) from None
        if streams[handle.agent] >= LISTEN_STREAMS_PER_AGENT:
            raise MCPError(
                INVALID_REQUEST,
                f"{handle.agent} has {LISTEN_STREAMS_PER_AGENT} listen streams open, the most "
                "one agent may; close one first",
            )
        streams[handle.agent] += 1
        uris = [str(uri) for uri in params.notifications.resource_subscriptions or ()]
        try:
            await events.start()  # (again if Redis dropped it): events flow before the ack
            with events.listening(uris):
                listening = listen(ctx, params)
                allowed = _still_allowed(ctx, me, bus, uris)
                return await _while_allowed(listening, allowed, handle.agent)
        finally:
            streams[handle.agent] -= 1
            if streams[handle.agent] <= 0:
                del streams[handle.agent]

    lowlevel.add_request_handler(
        "subscriptions/listen", SubscriptionsListenRequestParams, on_listen
    )


def _still_allowed(ctx: Any, me: Any, bus: MessageBus, uris: list[str]) -> Callable[[], bool]:
    """Whether the request's credentials still name an agent (a bearer token may be revoked
    while its stream is open; a stdio agent always is) that may still hear of `uris` (an
    admin taken out of the ACL no longer hears of others' inboxes)."""

    def check() -> bool:
        try:
            handle = bus.as_agent(_caller(ctx, me), front_door=True)
        except ToolError:
            return False
        return all(handle.may_listen(uri) for uri in uris)

    return check


async def _while_allowed(listening: Awaitable[T], allowed: Callable[[], bool], agent: str) -> T:
    """Runs a listen stream until it ends, or until its caller's token is revoked or its
    rights no longer cover it: then it ends with an error saying so."""
    revoked = False

    async def watch(scope: anyio.CancelScope) -> None:
        nonlocal revoked
        while True:
            await anyio.sleep(CREDENTIAL_CHECK_SECONDS)
            if not allowed():
                revoked = True
                scope.cancel()
                return

    results: list[T] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch, tg.cancel_scope)
        results.append(await listening)
        tg.cancel_scope.cancel()
    if revoked or not results:
        raise MCPError(
            INVALID_REQUEST,
            f"the token of {agent} was revoked, or its rights changed: stream closed",
        )
    return results[0]


def _caller(ctx: Any, me: Any) -> str:
    """Identity from a lowlevel request context (same rules as tools)."""

    class _Shim:
        def __init__(self, request_context: Any) -> None:
            self.request_context = request_context

        @property
        def headers(self) -> Any:
            request = getattr(self.request_context, "request", None)
            return getattr(request, "headers", None)

    return str(me(_Shim(ctx)))
