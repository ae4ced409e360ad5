"""Who may scrape the worker exporter's /metrics: with METRICS_TOKEN, whoever carries it;
without it, this machine only (its series name agents and their inbox depths). A real
exporter on 0.0.0.0, reached through loopback and through this machine's own non-loopback
address (so the peer is not loopback), by httpx."""

from __future__ import annotations

import httpx

from tests.support.processes import free_port
from tests.support.waiting import wait_for
from tests.support.web import outside_address
from workers.metrics_exporter import start_exporter

TOKEN = "scrape-" + "s" * 40


def exporter(env, **overrides) -> int:
    port = free_port()
    start_exporter("0.0.0.0", port, env.settings(**overrides))
    wait_for(
        lambda: _status(f"http://127.0.0.1:{port}/metrics", {}) is not None, 10, "the exporter"
    )
    return port


def _status(url, headers):
    try:
        return httpx.get(url, headers=headers, timeout=5).status_code
    except httpx.TransportError:
        return None


def scrape(address: str, port: int, headers=None) -> httpx.Response:
    # The Host names the exporter by address, as Prometheus does; the peer is `address`.
    return httpx.get(f"http://{address}:{port}/metrics", headers=headers or {}, timeout=5)


def test_without_a_token_only_this_machine_may_scrape(module_env):
    port = exporter(module_env)
    local = scrape("127.0.0.1", port)
    assert local.status_code == 200 and "message_bus_" in local.text  # the control
    remote = scrape(outside_address(), port)
    assert remote.status_code == 403
    assert "MESSAGE_BUS_METRICS_TOKEN" in remote.text and "message_bus_" not in remote.text


def test_with_a_token_any_host_that_carries_it_may_scrape(module_env):
    port = exporter(module_env, metrics_token=TOKEN)
    outside = outside_address()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for address in ("127.0.0.1", outside):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            refused = scrape(address, port, headers)
            assert refused.status_code == 401, (address, headers)
            assert "message_bus_" not in refused.text
        answered = scrape(address, port, auth)
        assert answered.status_code == 200 and "message_bus_" in answered.text, address
