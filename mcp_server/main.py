"""Running the MCP server: stdio for one agent, streamable HTTP for many (`msgbus mcp`).

stdio serves one agent and logs only to stderr (stdout is the protocol), in the handshake
era with a Claude Code channel (mcp_server/stdio.py; `modern` serves both eras and no
channel); HTTP serves many agents, each identified by a bearer token from the tokens file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import uvicorn

from bus.errors import ConfigError
from bus.schema import check_agent_id
from bus.settings import Settings
from bus.tokens import TokenFile
from mcp_server.identity import Identity
from mcp_server.processes import HttpOptions, Supervisor, build_http, processes_wanted, say_where
from mcp_server.server import build_server
from mcp_server.serving import uvicorn_settings
from mcp_server.stdio import serve_stdio

logger = logging.getLogger(__name__)


def run_stdio(settings: Settings, agent: str | None, profile: str, modern: bool) -> None:
    """Serves `agent` (or MESSAGE_BUS_AGENT_ID) on stdin/stdout until stdin closes."""
    agent = agent or settings.agent_id
    if not agent:
        raise ConfigError("stdio needs an identity: --agent NAME or MESSAGE_BUS_AGENT_ID")
    try:
        check_agent_id(agent)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    server, events = build_server(settings, Identity.stdio(agent), profile)
    server.bus.runtime.keyring.announce_forever("mcp")

    async def serve() -> None:
        try:
            if modern:
                await server.run_stdio_async()  # returns when stdin closes
            else:
                await serve_stdio(server, events, agent)
        finally:
            await events.close()
            server.bus.close()

    anyio.run(serve)


def run_http(
    settings: Settings,
    host: str,
    port: int,
    profile: str,
    tokens_path: Path | None = None,
    log_level: str = "WARNING",
    processes: int | None = None,
) -> None:
    """Serves every agent holding a token of the tokens file, until stopped: in this
    process, or in several on the one address (mcp_server/processes.py)."""
    options = HttpOptions(
        host,
        port,
        profile,
        tokens_path or settings.tokens_path,
        log_level,
        processes_wanted(settings, processes),
    )
    if not TokenFile(options.tokens_path).agents():
        logger.warning(
            "no tokens in %s: create one with `msgbus token create AGENT`", options.tokens_path
        )
    if options.processes > 1:
        Supervisor(options).run()
        return
    app = build_http(settings, options)
    say_where(options)
    uvicorn.run(app, host=host, port=port, **uvicorn_settings(log_level))
