"""Which Host and Origin header values are a local web server's own (the HTTP server's
routes, the worker's metrics exporter): the rest is a page elsewhere reaching a port on this
machine, by DNS rebinding or from another origin.

A page in a browser can reach a server on 127.0.0.1: by DNS rebinding (its own name, our
address: the request's Host is its name) or from another origin on the same machine (another
localhost port: SameSite cookies do not tell ports apart). So on every bind address, the
0.0.0.0 of the compose file included:
- a request whose Host is not one of ours is refused (421);
- a request that carries an Origin that is not one of ours is refused (403);
- a state-changing request authenticated by a cookie must carry our Origin (a browser
  always sends one on POST; a script with a bearer token needs none).
Ours: the bind host (loopback names for 127.0.0.1; loopback names and this machine's
names for 0.0.0.0), plus MESSAGE_BUS_ALLOWED_HOSTS and MESSAGE_BUS_ALLOWED_ORIGINS. An
Origin of ours names our port: one without it is a page on the scheme's default port.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from bus.settings import Settings

LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
ANY = ("0.0.0.0", "::", "")
SCHEMES = ("http", "https")


@dataclass(frozen=True)
class WebOrigins:
    hosts: frozenset[str]  # Host header values accepted (with and without the port)
    origins: frozenset[str]  # Origin header values accepted

    def host_ok(self, host: str | None) -> bool:
        return host is not None and host.lower() in self.hosts

    def origin_ok(self, origin: str | None) -> bool:
        return origin is None or origin.lower() in self.origins


def url_host(host: str) -> str:
    """A bind host as a URL and a Host header name it: an IPv6 literal in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def http_base(host: str, port: int) -> str:
    return f"http://{url_host(host)}:{port}"


def web_origins(host: str, port: int, settings: Settings) -> WebOrigins:
    names = {url_host(host).lower()}
    if url_host(host) in LOOPBACK or host in ANY:
        names |= set(LOOPBACK)
    if host in ANY:
        names.discard(host)
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    extra = {h.lower() for h in settings.allowed_host_list}
    hosts = {n for name in names | extra for n in (name, f"{name}:{port}")}
    # A page of ours carries our port in its Origin (a browser leaves out only the
    # scheme's default port): "http://localhost" is a page on port 80 of this machine,
    # another localhost port. Names an operator allows (a proxy in front) keep both forms.
    origins = {f"{scheme}://{name}:{port}" for name in names for scheme in SCHEMES}
    origins |= {f"http://{name}" for name in names if port == 80}
    origins |= {f"https://{name}" for name in names if port == 443}
    origins |= {
        f"{scheme}://{n}" for name in extra for n in (name, f"{name}:{port}") for scheme in SCHEMES
    }
    origins |= {o.lower().rstrip("/") for o in settings.allowed_origin_list}
    return WebOrigins(frozenset(hosts), frozenset(origins))
