"""The stdio transport: one agent per process, in the handshake protocol era, with a channel.

Claude Code opens a stdio connection with a `server/discover` probe (the 2026-07-28
revision). A server that answers it puts the connection in the modern era, where Claude
Code skips channel notifications ("no unsolicited notification path"); one that answers
method-not-found (-32601) gets `initialize` at 2025-11-25, and channels work. So by default
this driver serves the handshake era only (the SDK's `serve_loop` recipe, keeping hold of
the connection): `server/discover` and `subscriptions/listen` are method-not-found,
`resources/subscribe` works, the initialize result declares
`experimental["claude/channel"]`, and once the client has sent `notifications/initialized`
the agent's Channel rings on it. Every 2.x client falls back to `initialize` on -32601,
and 1.x clients never probe.

`msgbus mcp --agent A --modern` serves both eras instead (the SDK's `Server.run`): modern
clients get `subscriptions/listen` over stdio, and there is no channel.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import anyio
from mcp.server.connection import Connection
from mcp.server.runner import serve_connection
from mcp.server.stdio import stdio_server
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from mcp.shared.transport_context import TransportContext

from mcp_server.channel import CAPABILITY, Channel
from mcp_server.push import InboxEvents
from mcp_server.server import BusServer

logger = logging.getLogger(__name__)


async def serve_stdio(server: BusServer, events: InboxEvents, agent: str) -> None:
    """Serves stdin/stdout until stdin closes, ringing `agent`'s channel on the way."""
    lowlevel = server._lowlevel_server
    options = lowlevel.create_initialization_options(experimental_capabilities={CAPABILITY: {}})
    async with (
        stdio_server() as (read_stream, write_stream),
        lowlevel.lifespan(lowlevel) as state,
    ):
        dispatcher: JSONRPCDispatcher[TransportContext] = JSONRPCDispatcher(
            read_stream,
            write_stream,
            # As the SDK's loop does: a client that pipelines `initialize` with its next
            # request sees the initialized state.
            inline_methods=frozenset({"initialize"}),
        )
        connection = Connection.for_loop(dispatcher)

        async def notify(method: str, params: Mapping[str, Any]) -> None:
            await connection.notify(method, params)  # never raises: dropped if closed

        channel = Channel(server.bus, events, agent, notify)

        async def ring_once_initialized() -> None:
            await connection.initialized.wait()
            await channel.run()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(ring_once_initialized)
            try:
                await serve_connection(
                    lowlevel,
                    dispatcher,
                    connection=connection,
                    lifespan_state=state,
                    init_options=options,
                )
            finally:
                tasks.cancel_scope.cancel()
