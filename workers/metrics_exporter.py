"""The worker's Prometheus exporter on METRICS_HOST:METRICS_PORT, under the HTTP server's
rules: only for requests that name one of its own hosts or an IP address (DNS rebinding
always comes with a name; Prometheus scrapes by address) and carry no foreign Origin, and
with `Authorization: Bearer <METRICS_TOKEN>` when that token is set, from this machine only
when it is not (bus.metrics_access). Its series name agents and their inbox depths."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from bus.metrics_access import metrics_refusal
from bus.settings import Settings
from bus.web_origins import web_origins

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not news


def guarded(app: WSGIApp, host: str, port: int, settings: Settings) -> WSGIApp:
    """`app` behind the Host, Origin and scrape-access checks."""
    origins = web_origins(host, port, settings)
    token = settings.metrics_token

    def checked(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        host_header = environ.get("HTTP_HOST")
        if not (origins.host_ok(host_header) or _is_address(host_header)):
            status, text = (
                "421 Misdirected Request",
                "unknown Host: this exporter answers only for its own names",
            )
        elif not origins.origin_ok(environ.get("HTTP_ORIGIN")):
            status, text = "403 Forbidden", "Origin not allowed (MESSAGE_BUS_ALLOWED_ORIGINS)"
        elif (
            refused := metrics_refusal(
                token, environ.get("HTTP_AUTHORIZATION"), environ.get("REMOTE_ADDR")
            )
        ) is not None:
            status, text = f"{refused[0]} {HTTPStatus(refused[0]).phrase}", refused[1]
        else:
            return app(environ, start_response)
        start_response(status, [("Content-Type", "text/plain")])
        return [text.encode()]

    return checked


def _is_address(host_header: str | None) -> bool:
    """Whether a Host header names an IP address (with or without the port)."""
    if not host_header:
        return False
    name = host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header
    name = name.split("]")[0].lstrip("[") if name.startswith("[") else name
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def start_exporter(host: str, port: int, settings: Settings) -> None:
    """Serves /metrics in a daemon thread (IPv4 or IPv6, as `host` is); OSError when the
    port is taken or the address is not this machine's."""
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("MetricsServer", (ThreadingWSGIServer,), {"address_family": family})
    server: ThreadingWSGIServer = make_server(
        host,
        port,
        guarded(make_wsgi_app(), host, port, settings),
        server_class,
        handler_class=_QuietHandler,
    )
    threading.Thread(target=server.serve_forever, name="metrics-exporter", daemon=True).start()
