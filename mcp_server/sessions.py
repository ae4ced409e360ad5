"""Each agent's share of the HTTP server's handshake-era MCP sessions.

The SDK caps the sessions of a process (`max_sessions`) but not anyone's share of them: one
agent that opened sessions and never closed them (each costs ~40 KB and lives until it
idles out) locked every other agent out with "Too many open sessions". A session belongs to
the credential that opened it (the SDK's session owner, whose client id is the token's
agent), so the sessions an agent holds are counted from there. An agent at its share gets
a 429 naming the limit; its other sessions, and everyone else's, go on. Protocol
2026-07-28 requests open no session and are not counted.

The check runs twice: before the request, to answer with the error above, and inside the
SDK's admission (under its lock), so that a burst of opening requests cannot overshoot the
share between the two.
"""

from __future__ import annotations

from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.types import INVALID_REQUEST, ErrorData, JSONRPCError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from bus.settings import Settings

SESSION_HEADER = "mcp-session-id"


class SessionShare:
    def __init__(self, manager: Any, settings: Settings) -> None:
        self.manager = manager
        self.per_agent = settings.mcp_sessions_per_agent
        self.idle_seconds = settings.mcp_session_idle_seconds

    def held_by(self, agent: str) -> int:
        owners = self.manager._session_owners.values()
        return sum(1 for owner in owners if owner["client_id"] == agent)

    def install(self) -> None:
        """Wraps the manager's stateful path and its admission of a new session."""
        handle, admit = self.manager._handle_stateful_request, self.manager._admit_session

        async def handle_within_share(scope: Scope, receive: Receive, send: Send) -> None:
            agent = _agent(scope)
            opening = Request(scope).headers.get(SESSION_HEADER) is None
            if opening and agent is not None and self.held_by(agent) >= self.per_agent:
                await self.refusal(agent)(scope, receive, send)
                return
            await handle(scope, receive, send)

        def admit_within_share(requestor: Any) -> Any:
            if requestor is not None and self.held_by(requestor["client_id"]) >= self.per_agent:
                return None  # the SDK answers "Too many open sessions" (a burst's overshoot)
            return admit(requestor)

        self.manager._handle_stateful_request = handle_within_share
        self.manager._admit_session = admit_within_share

    def refusal(self, agent: str) -> Response:
        message = (
            f"agent {agent} holds {self.per_agent} open MCP sessions on this server process, "
            f"its limit (MESSAGE_BUS_MCP_SESSIONS_PER_AGENT): end one (HTTP DELETE with its "
            f"Mcp-Session-Id) or let one idle out ({self.idle_seconds:g} s, "
            "MESSAGE_BUS_MCP_SESSION_IDLE_SECONDS)"
        )
        body = JSONRPCError(
            jsonrpc="2.0", id=None, error=ErrorData(code=INVALID_REQUEST, message=message)
        )
        return Response(
            body.model_dump_json(by_alias=True, exclude_none=True),
            status_code=429,
            media_type="application/json",
        )


def _agent(scope: Scope) -> str | None:
    user = scope.get("user")
    if not isinstance(user, AuthenticatedUser):
        return None
    return authorization_context(user)["client_id"]
