"""How every HTTP listener of the bus (MCP server, dashboard) runs uvicorn."""

from __future__ import annotations

from typing import Any

# Idle keep-alive connections are kept longer than clients keep theirs (httpx 5 s, Node's
# undici 4 s): with both at 5 s, a client could send its next request on a connection the
# server was closing at that instant, and get a ReadError for a request never read.
KEEP_ALIVE_SECONDS = 20
GRACEFUL_SHUTDOWN_SECONDS = 5


def uvicorn_settings(log_level: str) -> dict[str, Any]:
    return {
        "log_level": log_level.lower(),
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
    }
