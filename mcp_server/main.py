"""Entry point: `msgbus mcp [--agent A [--modern]] [--http --host H --port P] [--profile core|full]`.

stdio serves one agent and logs only to stderr (stdout is the protocol), in the handshake
era with a Claude Code channel (mcp_server/stdio.py; `--modern` serves both eras and no
channel); HTTP serves many agents, each identified by a bearer token from the tokens file.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import anyio

from bus import heap
from bus.errors import BusError, ConfigError
from bus.logs import configure
from bus.schema import check_agent_id
from bus.settings import Settings
from bus.tokens import TokenFile
from mcp_server.identity import Identity
from mcp_server.server import build_server
from mcp_server.stdio import serve_stdio

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="msgbus mcp", description=__doc__)
    parser.add_argument("--agent", default=None, help="agent id (stdio); or MESSAGE_BUS_AGENT_ID")
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--profile",
        choices=["core", "full"],
        default=os.environ.get("MESSAGE_BUS_MCP_PROFILE", "core"),
    )
    parser.add_argument(
        "--modern",
        action="store_true",
        default=os.environ.get("MESSAGE_BUS_MCP_MODERN", "") not in ("", "0", "false"),
        help="stdio: also serve the 2026-07-28 era (subscriptions/listen; no Claude Code channel)",
    )
    parser.add_argument("--tokens-file", type=Path, default=None)
    parser.add_argument("--log-level", default=os.environ.get("MESSAGE_BUS_LOG_LEVEL", "WARNING"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure(args.log_level)
    try:
        settings = Settings()
        settings.signing_keys  # noqa: B018 - production without a secret fails here, at start
        if args.http:
            run_http(settings, args)
        else:
            run_stdio(settings, args)
    except (BusError, ConfigError) as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        pass


def run_stdio(settings: Settings, args: argparse.Namespace) -> None:
    agent = args.agent or settings.agent_id
    if not agent:
        raise ConfigError("stdio needs an identity: --agent NAME or MESSAGE_BUS_AGENT_ID")
    try:
        check_agent_id(agent)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    server, events = build_server(settings, Identity.stdio(agent), args.profile)
    server.bus.runtime.keyring.announce_forever("mcp")

    async def serve() -> None:
        try:
            if args.modern:
                await server.run_stdio_async()  # returns when stdin closes
            else:
                await serve_stdio(server, events, agent)
        finally:
            await events.close()
            server.bus.close()

    anyio.run(serve)


def run_http(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    from mcp_server.http import build_app

    tokens_path = args.tokens_file or settings.tokens_file or settings.state_dir / "tokens.json"
    tokens = TokenFile(tokens_path)
    if not tokens.agents():
        logger.warning("no tokens in %s: create one with `msgbus token create AGENT`", tokens_path)
    base_url = f"http://{args.host}:{args.port}"
    server, events = build_server(settings, Identity.http(tokens, base_url), args.profile)
    server.bus.runtime.keyring.announce_forever("mcp")
    app = build_app(server, events, settings, host=args.host, port=args.port, tokens=tokens)
    heap.freeze_startup_heap()  # long-polls are not held up by full collections of it
    print(
        f"MCP streamable HTTP on {base_url}/mcp  dashboard {base_url}/ui  "
        f"metrics {base_url}/metrics  health {base_url}/healthz",
        file=sys.stderr,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level.lower(),
        timeout_graceful_shutdown=5,
    )
