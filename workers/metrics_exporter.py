"""The worker's Prometheus exporter on METRICS_HOST:METRICS_PORT, under the HTTP server's
rules: only for requests that name one of its own hosts and carry no foreign Origin (a page
in a browser on this machine cannot read it by DNS rebinding), and with
`Authorization: Bearer <METRICS_TOKEN>` when that token is set. Its series name every
agent and its inbox depth."""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from bus.settings import Settings
from bus.web_origins import web_origins

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not news


def guarded(app: WSGIApp, host: str, port: int, settings: Settings) -> WSGIApp:
    """`app` behind the Host, Origin and token checks."""
    origins = web_origins(host, port, settings)
    token = settings.metrics_token
    expected = f"Bearer {token.get_secret_value()}".encode() if token is not None else None

    def checked(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not origins.host_ok(environ.get("HTTP_HOST")):
            status, text = (
                "421 Misdirected Request",
                "unknown Host: this exporter answers only for its own names",
            )
        elif not origins.origin_ok(environ.get("HTTP_ORIGIN")):
            status, text = "403 Forbidden", "Origin not allowed (MESSAGE_BUS_ALLOWED_ORIGINS)"
        elif expected is not None and not hmac.compare_digest(
            environ.get("HTTP_AUTHORIZATION", "").encode(), expected
        ):
            status, text = (
                "401 Unauthorized",
                "metrics need 'Authorization: Bearer <MESSAGE_BUS_METRICS_TOKEN>'",
            )
        else:
            return app(environ, start_response)
        start_response(status, [("Content-Type", "text/plain")])
        return [text.encode()]

    return checked


def start_exporter(host: str, port: int, settings: Settings) -> None:
    """Serves /metrics in a daemon thread; OSError when the port is taken."""
    server = make_server(
        host,
        port,
        guarded(make_wsgi_app(), host, port, settings),
        ThreadingWSGIServer,
        handler_class=_QuietHandler,
    )
    threading.Thread(target=server.serve_forever, name="metrics-exporter", daemon=True).start()
