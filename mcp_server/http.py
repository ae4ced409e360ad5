"""The HTTP app: MCP at /mcp (bearer auth, Host/Origin checks) plus /healthz and /readyz."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
from mcp.server.transport_security import TransportSecuritySettings
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bus.health import check_health
from bus.metrics import refresh_gauges
from bus.settings import Settings
from bus.tokens import TokenFile
from mcp_server.dashboard import dashboard_routes
from mcp_server.push import InboxEvents
from mcp_server.server import BusServer


def transport_security(host: str, port: int) -> TransportSecuritySettings:
    """DNS-rebinding protection as the SDK does it: only our own Host and Origin."""
    names = {host, "127.0.0.1", "localhost"} if host in ("127.0.0.1", "localhost") else {host}
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=host not in ("0.0.0.0", "::"),
        allowed_hosts=[f"{n}:{port}" for n in names] + list(names),
        allowed_origins=[f"http://{n}:{port}" for n in names],
    )


def build_app(
    server: BusServer,
    events: InboxEvents,
    settings: Settings,
    *,
    host: str,
    port: int,
    tokens: TokenFile | None = None,
) -> Starlette:
    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        health = await anyio.to_thread.run_sync(lambda: check_health(server.bus.runtime))
        return JSONResponse(
            health.model_dump(mode="json"), status_code=200 if health.ready else 503
        )

    async def metrics_endpoint(request: Request) -> Response:
        await anyio.to_thread.run_sync(lambda: refresh_gauges(server.bus.runtime))
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    server.custom_route("/healthz", methods=["GET"])(healthz)
    server.custom_route("/readyz", methods=["GET"])(readyz)
    server.custom_route("/metrics", methods=["GET"])(metrics_endpoint)
    app = server.streamable_http_app(transport_security=transport_security(host, port), host=host)
    if tokens is not None:
        app.router.routes.extend(dashboard_routes(server.bus, tokens))
    inner_lifespan = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[None]:
        async with inner_lifespan(app_):
            try:
                yield
            finally:
                await events.close()
                server.bus.close()

    app.router.lifespan_context = lifespan
    return app
