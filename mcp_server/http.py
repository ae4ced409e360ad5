"""The HTTP app: MCP at /mcp (bearer auth), the dashboard at /ui, /healthz, /readyz and
/metrics, all behind the Host and Origin checks of mcp_server.websecurity.

Readiness and the metrics gauges are computed by one background task every
`REFRESH_EVERY` seconds and served from there: a burst of /readyz or /metrics requests costs
no broker connection and no thread, so it can neither exhaust a pool nor hold up tool calls.
While the bus is not ready the check runs every `NOT_READY_REFRESH_EVERY` seconds instead, so
a supervisor or load balancer waiting on /readyz sees it turn ready within that time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bus.health import Health, check_health, refresh_gauges
from bus.metrics_access import metrics_refusal
from bus.settings import Settings
from bus.tokens import TokenFile
from mcp_server import procmetrics
from mcp_server.affinity import SessionAffinity
from mcp_server.dashboard import dashboard_routes
from mcp_server.push import InboxEvents
from mcp_server.server import BusServer
from mcp_server.sessions import SessionShare
from mcp_server.websecurity import HostOriginGuard, transport_security, web_origins

logger = logging.getLogger(__name__)

REFRESH_EVERY = 5.0
NOT_READY_REFRESH_EVERY = 0.5


class Readiness:
    """The last health check and gauge refresh, kept fresh by one background task."""

    def __init__(self, server: BusServer) -> None:
        self.server = server
        self.health: Health | None = None

    def refresh(self) -> None:
        runtime = self.server.bus.runtime
        self.health = check_health(runtime, kind="mcp")
        refresh_gauges(runtime)

    async def run(self) -> None:
        while True:
            try:
                await anyio.to_thread.run_sync(self.refresh)
            except Exception:  # noqa: BLE001 - the loop outlives any one failed check
                logger.exception("readiness check failed")
            await asyncio.sleep(self.next_check_in())

    def next_check_in(self) -> float:
        ready = self.health is not None and self.health.ready
        return REFRESH_EVERY if ready else NOT_READY_REFRESH_EVERY


def build_app(
    server: BusServer,
    events: InboxEvents,
    settings: Settings,
    *,
    host: str,
    port: int,
    tokens: TokenFile | None = None,
    affinity: Callable[[Any], SessionAffinity] | None = None,
) -> Any:
    """`affinity`: one of several processes on the address (mcp_server.processes), whose
    handshake-era sessions stay in the process that opened them."""
    readiness = Readiness(server)
    metrics_token = settings.metrics_token

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        health = readiness.health
        if health is None:
            return JSONResponse({"ready": False, "status": "starting"}, status_code=503)
        # Unauthenticated: no key fingerprints (each is a way to test guesses of the
        # secret offline), no process list and no worker names (hosts, worker agents):
        # `msgbus health` and the dashboard have them.
        body = health.model_dump(mode="json", exclude={"processes", "warnings", "workers"})
        body["warnings"] = len(health.warnings)
        return JSONResponse(body, status_code=200 if health.ready else 503)

    async def metrics_endpoint(request: Request) -> Response:
        peer = request.client.host if request.client else None
        refused = metrics_refusal(metrics_token, request.headers.get("authorization"), peer)
        if refused is not None:
            return Response(refused[1], status_code=refused[0])
        return Response(generate_latest(procmetrics.registry()), media_type=CONTENT_TYPE_LATEST)

    server.custom_route("/healthz", methods=["GET"])(healthz)
    server.custom_route("/readyz", methods=["GET"])(readyz)
    server.custom_route("/metrics", methods=["GET"])(metrics_endpoint)
    origins = web_origins(host, port, settings)
    app = server.streamable_http_app(
        transport_security=transport_security(origins),
        host=host,
        session_idle_timeout=settings.mcp_session_idle_seconds,
    )
    SessionShare(server.session_manager, settings).install()
    if tokens is not None:
        app.router.routes.extend(dashboard_routes(server.bus, tokens, origins))
    inner_lifespan = app.router.lifespan_context
    routed = affinity(app) if affinity is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[None]:
        async with inner_lifespan(app_):
            # Subscribed to Redis's inbox events before the first request: a listen stream
            # acknowledged before then could miss the very delivery it was opened for.
            await events.start()
            task = asyncio.get_running_loop().create_task(readiness.run())
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await events.close()
                if routed is not None:
                    await routed.aclose()
                server.bus.close()

    app.router.lifespan_context = lifespan
    return HostOriginGuard(routed or app, origins)
