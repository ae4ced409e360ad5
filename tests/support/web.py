"""HTTP helpers: a status code without raising, Prometheus text, an MCP HTTP server, an
address of this machine to be 'another host' from."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.support.processes import free_port, spawn
from tests.support.waiting import wait_for


def http_status(url: str) -> int | None:
    """The status code of a GET, or None when nothing answers."""
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def metric(text, name, **labels):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def start_http_server(env, name, tokens, *flags, up_within=30, **extra):
    """A `msgbus mcp --http` process on a free port (`flags` added to its command line,
    `extra` to its environment); returns (process, base URL) once up, and fails with its
    log if it exits first."""
    port = free_port()
    args = ["--http", "--port", str(port), "--tokens-file", str(tokens), *flags]
    proc, log = spawn(env, name, ["-m", "msgbus", "mcp", *args], **extra)
    base = f"http://127.0.0.1:{port}"
    wait_http_up(proc, log, base, up_within)
    return proc, base


def wait_http_up(proc, log, url, timeout):
    """Waits for `url`/healthz to answer 200; fails with the server's log if it exits."""

    def up():
        if proc.poll() is not None:
            pytest.fail(f"MCP HTTP server exited:\n{log.read_text()[-2000:]}")
        return http_status(f"{url}/healthz") == 200

    wait_for(up, timeout, "the MCP HTTP server")


def outside_address() -> str:
    """An address of this machine that is not loopback: a peer from it is 'another host'."""
    for family, _, _, _, sockaddr in socket.getaddrinfo(socket.gethostname(), None):
        address = sockaddr[0]
        if family == socket.AF_INET and not address.startswith("127."):
            return address
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: it only picks a route
        address = probe.getsockname()[0]
    finally:
        probe.close()
    if address.startswith("127.") or address == "0.0.0.0":
        pytest.fail("this machine has no non-loopback IPv4 address to scrape from")
    return address
