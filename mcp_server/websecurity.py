"""Host and Origin checks for every route of the HTTP server: /mcp, /ui, health, metrics.

A page in a browser can reach a server on 127.0.0.1: by DNS rebinding (its own name, our
address: the request's Host is its name) or from another origin on the same machine (another
localhost port: SameSite cookies do not tell ports apart). So on every bind address, the
0.0.0.0 of the compose file included:
- a request whose Host is not one of ours is refused (421);
- a request that carries an Origin that is not one of ours is refused (403);
- a state-changing request authenticated by a cookie must carry our Origin (a browser
  always sends one on POST; a script with a bearer token needs none).
Ours: the bind host (loopback names for 127.0.0.1; loopback names and this machine's
names for 0.0.0.0), plus MESSAGE_BUS_ALLOWED_HOSTS and MESSAGE_BUS_ALLOWED_ORIGINS.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from mcp.server.transport_security import TransportSecuritySettings

from bus.settings import Settings

LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
ANY = ("0.0.0.0", "::", "")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Any]


@dataclass(frozen=True)
class WebOrigins:
    hosts: frozenset[str]  # Host header values accepted (with and without the port)
    origins: frozenset[str]  # Origin header values accepted

    def host_ok(self, host: str | None) -> bool:
        return host is not None and host.lower() in self.hosts

    def origin_ok(self, origin: str | None) -> bool:
        return origin is None or origin.lower() in self.origins

    def transport_security(self) -> TransportSecuritySettings:
        """The same rules for the MCP SDK's own checks on /mcp."""
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=sorted(self.hosts),
            allowed_origins=sorted(self.origins),
        )


def web_origins(host: str, port: int, settings: Settings) -> WebOrigins:
    names = {host.lower()}
    if host in LOOPBACK or host in ANY:
        names |= set(LOOPBACK)
    if host in ANY:
        names.discard(host)
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    names |= {h.lower() for h in settings.allowed_host_list}
    hosts = {n for name in names for n in (name, f"{name}:{port}")}
    origins = {f"{scheme}://{n}" for n in hosts for scheme in ("http", "https")}
    origins |= {o.lower().rstrip("/") for o in settings.allowed_origin_list}
    return WebOrigins(frozenset(hosts), frozenset(origins))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


class HostOriginGuard:
    """ASGI middleware applying `WebOrigins` to every HTTP request."""

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
        await self.app(scope, receive, send)


async def _refuse(send: Callable[[Any], Awaitable[None]], status: int, text: str) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})
