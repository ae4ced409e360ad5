"""Host and Origin checks for every route of the HTTP server: /mcp, /ui, health, metrics
(bus.web_origins says which names are ours and why), and no framing of any of its pages."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from mcp.server.transport_security import TransportSecuritySettings

from bus.web_origins import WebOrigins, web_origins

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Any]

__all__ = ["HostOriginGuard", "WebOrigins", "transport_security", "web_origins"]


def transport_security(origins: WebOrigins) -> TransportSecuritySettings:
    """The same rules for the MCP SDK's own checks on /mcp."""
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=sorted(origins.hosts),
        allowed_origins=sorted(origins.origins),
    )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


# On every response: no page of ours in another's frame. The Origin checks cannot tell a
# framed dashboard's own requests from the admin's, and SameSite cookies do not separate
# ports, so a page on another local port could overlay /ui and take the admin's clicks.
NO_FRAMING = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
]


class HostOriginGuard:
    """ASGI middleware applying `WebOrigins` to every HTTP request, and NO_FRAMING to
    every response."""

    def __init__(self, app: ASGIApp, origins: WebOrigins) -> None:
        self.app = app
        self.origins = origins

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] == "http":
            if not self.origins.host_ok(_header(scope, b"host")):
                await _refuse(send, 421, "unknown Host: this server answers only for its own names")
                return
            if not self.origins.origin_ok(_header(scope, b"origin")):
                await _refuse(send, 403, "Origin not allowed (MESSAGE_BUS_ALLOWED_ORIGINS)")
                return

            async def framed_never(message: Any) -> None:
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", ()), *NO_FRAMING]}
                await send(message)

            await self.app(scope, receive, framed_never)
            return
        await self.app(scope, receive, send)


async def _refuse(send: Callable[[Any], Awaitable[None]], status: int, text: str) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", b"%d" % len(body)),
                *NO_FRAMING,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
