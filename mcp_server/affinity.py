"""Sessions of the HTTP server when it runs in several processes on one address.

The kernel hands each new connection to any of the processes (SO_REUSEPORT), but a
handshake-era (2025-11-25 and older) session lives in the process that opened it: its SDK
transport, its GET stream for `notifications/resources/updated`, its subscriptions. So
every process tags the session ids it hands out with its own index ("3.<sdk id>"), and a
request for a session of another process is passed, as it came, to that process on its
private Unix socket; the answer, an event stream included, is passed back. 2026-07-28
requests carry no session and are served where they land (their push, subscriptions/listen,
comes from Redis on every process).

The forwarding process has already applied the Host and Origin checks; the owner checks
them again, and the bearer token, on the request as the client sent it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import anyio
import httpx

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SESSION_HEADER = b"mcp-session-id"
# Not passed on: they describe one hop, not the request (the body is sent whole).
HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"upgrade"}
MAX_BODY = 4 * 1024 * 1024  # the SDK's own limit on a request body


def socket_path(directory: Path, index: int) -> Path:
    return directory / f"{index}.sock"


class SessionAffinity:
    """ASGI middleware: this process's session ids carry `index`; other processes' go there."""

    def __init__(self, app: ASGIApp, index: int, processes: int, directory: Path) -> None:
        self.app = app
        self.tag = f"{index}.".encode()
        self.index = index
        self.processes = processes
        self.directory = directory
        self.clients: dict[int, httpx.AsyncClient] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        session = _header(scope, SESSION_HEADER)
        owner = self._owner(session)
        if owner is not None and owner != self.index:
            await self._forward(owner, scope, receive, send)
            return
        if session is not None and owner == self.index:
            scope = dict(scope)
            scope["headers"] = [
                (k, v[len(self.tag) :] if k == SESSION_HEADER else v) for k, v in scope["headers"]
            ]
        await self.app(scope, receive, self._tagging(send))

    def _owner(self, session: bytes | None) -> int | None:
        if session is None:
            return None
        index, dot, _ = session.partition(b".")
        if not dot or not index.isdigit() or int(index) >= self.processes:
            return None  # not one of ours: the SDK answers 404
        return int(index)

    def _tagging(self, send: Send) -> Send:
        async def tagged(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [
                    (k, self.tag + v if k.lower() == SESSION_HEADER else v)
                    for k, v in message.get("headers", ())
                ]
            await send(message)

        return tagged

    def _client(self, owner: int) -> httpx.AsyncClient:
        client = self.clients.get(owner)
        if client is None:
            transport = httpx.AsyncHTTPTransport(uds=str(socket_path(self.directory, owner)))
            timeout = httpx.Timeout(connect=5.0, read=None, write=30.0, pool=30.0)
            client = httpx.AsyncClient(transport=transport, timeout=timeout)
            self.clients[owner] = client
        return client

    async def _forward(self, owner: int, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        if body is None:
            await _answer(send, 413, b"request body too large")
            return
        query = scope.get("query_string", b"").decode("latin-1")
        path = scope.get("raw_path", b"").decode("latin-1") or scope["path"]
        url = f"http://mcp-{owner}{path}"  # the Host header sent is the client's own
        request = self._client(owner).build_request(
            scope["method"],
            url + (f"?{query}" if query else ""),
            headers=[(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP],
            content=body,
        )
        try:
            response = await self._client(owner).send(request, stream=True)
        except httpx.TransportError:
            # The owner is gone (it died and is being replaced): so is the session.
            await _answer(send, 404, b"Session not found")
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP
                    ],
                }
            )
            async with anyio.create_task_group() as tg:

                async def until_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()  # the client left: stop reading the owner

                tg.start_soon(until_disconnect)
                with contextlib.suppress(httpx.TransportError):
                    async for chunk in response.aiter_raw():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
                tg.cancel_scope.cancel()
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()
        self.clients.clear()


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return bytes(value)
    return None


async def _read_body(receive: Receive) -> bytes | None:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(parts)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        parts.append(chunk)
        if not message.get("more_body"):
            return b"".join(parts)


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})
