"""An attacker's view of the HTTP server: the dashboard's writes (cookie, content type,
Origin), Host and Origin checks on a server bound to 0.0.0.0, /readyz and /metrics under a
burst, and /metrics behind its token. Real server processes, real workers, httpx."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

import httpx
import pytest

from bus.tokens import TokenFile
from tests.support.mcp import call, http
from tests.support.processes import free_port, spawn, stop
from tests.support.waiting import wait_for
from tests.support.web import http_status, outside_address
from tests.support.wire import publish_raw, wire_for

pytestmark = pytest.mark.timeout(180)

ADMIN = "ops"
METRICS_TOKEN = "metrics-" + "m" * 40


def serve(env, name, tokens_path, host="127.0.0.1", **extra):
    """`msgbus mcp --http --host HOST` on a free port, reached through 127.0.0.1 (through
    [::1] when HOST is that)."""
    port = free_port()
    proc, log = spawn(
        env,
        name,
        [
            "-m",
            "msgbus",
            "mcp",
            "--http",
            "--host",
            host,
            "--port",
            str(port),
            "--tokens-file",
            str(tokens_path),
        ],
        MESSAGE_BUS_ADMINS=f'["{ADMIN}"]',
        **extra,
    )
    base = f"http://{'[::1]' if host == '::1' else '127.0.0.1'}:{port}"

    def up():
        if proc.poll() is not None:
            pytest.fail(f"the HTTP server exited:\n{log.read_text()[-2000:]}")
        return http_status(f"{base}/healthz") == 200

    wait_for(up, 30, "the HTTP server")
    return proc, base, port


def history_count(base, token):
    """An MCP agent's get_history over HTTP: the server serves it."""

    async def scenario():
        async with http(base, token) as client:
            return await call(client, "get_history", {})

    return asyncio.run(scenario())["count"]


@pytest.fixture(scope="module")
def site(module_env, worker, tmp_path_factory):
    """The HTTP server with an admin and a non-admin token."""
    path = tmp_path_factory.mktemp("tokens") / "tokens.json"
    tokens = TokenFile(path)
    issued = {name: tokens.create(name) for name in (ADMIN, "alice")}
    proc, base, port = serve(module_env, "mcp-web", path)
    yield base, port, issued
    stop(proc)


@pytest.fixture
def bus(module_env, worker):
    client = module_env.bus()
    yield client
    client.close()


def dead_letter(env, bus, agents):
    """A forged message the worker dead-letters (bad signature): something to purge."""
    wire = wire_for(agents("s"), agents("r"), "forged")
    wire["signature"] = {"kid": "k1", "alg": "HMAC-SHA256", "value": "0" * 64}
    publish_raw(env, wire)
    wait_for(lambda: wire["id"] in dead_ids(bus), 30, "the forged message's dead letter")
    return wire["id"]


def dead_ids(bus):
    return {d.id for d in bus.dead_letters(1000)}


def login(base, token):
    """The dashboard's login form, posted from its own page: the admin's cookie."""
    response = httpx.post(
        f"{base}/ui/login", data={"token": token}, headers={"Origin": base}, timeout=10
    )
    assert response.status_code == 303, response.text
    cookie = response.cookies.get("msgbus_token")
    assert cookie
    return {"msgbus_token": cookie}


def purge(base, ids, *, cookies=None, headers=None, body=None):
    return httpx.post(
        f"{base}/ui/api/dead-letters/purge",
        cookies=cookies,
        headers=headers or {},
        content=body if body is not None else json.dumps({"ids": ids}).encode(),
        timeout=10,
    )


JSON = {"Content-Type": "application/json"}


# -- the dashboard's writes ---------------------------------------------------------------------


def test_a_cookie_write_with_a_text_plain_body_is_refused_and_purges_nothing(
    module_env, site, bus, agents
):
    base, _, tokens = site
    letter = dead_letter(module_env, bus, agents)
    cookies = login(base, tokens[ADMIN])
    body = f'{{"ids": ["{letter}"]}}'.encode()
    for content_type in (
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
    ):
        response = purge(
            base,
            [letter],
            cookies=cookies,
            headers={"Origin": base, "Content-Type": content_type},
            body=body,
        )
        assert response.status_code == 415, (content_type, response.text)
    assert letter in dead_ids(bus)
    # The rightful write: JSON from the dashboard's own page.
    response = purge(base, [letter], cookies=cookies, headers={"Origin": base, **JSON})
    assert response.status_code == 200 and response.json()["done"] == [letter]
    assert letter not in dead_ids(bus)


def test_a_cookie_write_from_another_localhost_port_is_refused(module_env, site, bus, agents):
    base, port, tokens = site
    letter = dead_letter(module_env, bus, agents)
    cookies = login(base, tokens[ADMIN])
    other = port + 1 if port < 65535 else port - 1
    foreign = [
        f"http://127.0.0.1:{other}",
        f"http://localhost:{other}",
        "http://localhost",  # a page on port 80 of this machine: another port, too
        "http://127.0.0.1",
        "https://localhost",
        "null",  # a sandboxed frame or a file:// page
    ]
    refused = {}
    for origin in foreign:
        response = purge(base, [letter], cookies=cookies, headers={"Origin": origin, **JSON})
        refused[origin] = response.status_code
    # A cookie write that carries no Origin at all is no dashboard page either.
    refused["(none)"] = purge(base, [letter], cookies=cookies, headers=JSON).status_code
    assert all(code == 403 for code in refused.values()), refused
    assert letter in dead_ids(bus)
    # The rightful writes: the dashboard's own page, and a script with the bearer token.
    ok = purge(
        base, [letter], cookies=cookies, headers={"Origin": f"http://localhost:{port}", **JSON}
    )
    assert ok.status_code == 200 and ok.json()["done"] == [letter]
    other_letter = dead_letter(module_env, bus, agents)
    scripted = purge(
        base, [other_letter], headers={"Authorization": f"Bearer {tokens[ADMIN]}", **JSON}
    )
    assert scripted.status_code == 200 and scripted.json()["done"] == [other_letter]


def test_a_non_admin_token_cannot_write_through_the_dashboard_at_all(module_env, site, bus, agents):
    base, _, tokens = site
    letter = dead_letter(module_env, bus, agents)
    response = purge(base, [letter], headers={"Authorization": f"Bearer {tokens['alice']}", **JSON})
    assert response.status_code == 401
    login_attempt = httpx.post(
        f"{base}/ui/login", data={"token": tokens["alice"]}, headers={"Origin": base}, timeout=10
    )
    assert login_attempt.status_code == 401 and "msgbus_token" not in login_attempt.cookies
    assert letter in dead_ids(bus)


# -- Host and Origin on every route, 0.0.0.0 included ---------------------------------------------


ROUTES = ["/healthz", "/readyz", "/metrics", "/ui", "/ui/api/overview", "/mcp"]


def test_a_server_bound_to_all_addresses_refuses_a_foreign_host_or_origin(
    module_env, worker, tmp_path
):
    path = tmp_path / "tokens.json"
    tokens = TokenFile(path)
    admin, alice = tokens.create(ADMIN), tokens.create("alice")
    proc, base, port = serve(module_env, "mcp-any", path, host="0.0.0.0")
    try:
        auth = {"Authorization": f"Bearer {admin}"}
        seen = {}
        for route in ROUTES:
            for name, headers in (
                ("rebound Host", {"Host": f"attacker.example:{port}"}),
                ("rebound Host, no port", {"Host": "attacker.example"}),
                ("foreign Origin", {"Origin": f"http://127.0.0.1:{free_port()}"}),
                ("foreign site", {"Origin": "https://attacker.example"}),
            ):
                response = httpx.get(f"{base}{route}", headers={**auth, **headers}, timeout=10)
                seen[(route, name)] = response.status_code
        refused = {k: v for k, v in seen.items() if v not in (403, 421)}
        assert not refused, refused
        assert {seen[(r, "rebound Host")] for r in ROUTES} == {421}
        assert {seen[(r, "foreign Origin")] for r in ROUTES} == {403}
        # The rightful clients: through 127.0.0.1, the dashboard and an MCP agent.
        overview = httpx.get(f"{base}/ui/api/overview", headers=auth, timeout=10)
        assert overview.status_code == 200 and "agents" in overview.json()

        assert history_count(base, alice) == 0
    finally:
        stop(proc)


# -- /readyz and /metrics under a burst ---------------------------------------------------------


def test_sixty_concurrent_readyz_and_metrics_requests_leave_tool_calls_answering(site, bus):
    base, _, tokens = site
    wait_for(lambda: http_status(f"{base}/readyz") in (200, 503), 30, "a first readiness check")

    async def scenario():
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with (
            httpx.AsyncClient(limits=limits, timeout=30) as web,
            http(base, tokens["alice"]) as agent,
        ):
            await call(agent, "read_messages", {"wait_seconds": 0})  # connected first
            burst = [
                asyncio.create_task(web.get(f"{base}{route}"))
                for route in ("/readyz", "/metrics")
                for _ in range(60)
            ]
            answered = await asyncio.wait_for(call(agent, "read_messages", {"wait_seconds": 0}), 30)
            codes = [r.status_code for r in await asyncio.wait_for(asyncio.gather(*burst), 60)]
            after = await asyncio.wait_for(web.get(f"{base}/readyz"), 15)
            return answered, codes, after.status_code

    answered, codes, after = asyncio.run(scenario())
    assert answered["count"] == 0
    assert sorted(set(codes)) in ([200], [200, 503], [503])
    assert codes.count(200) + codes.count(503) == 120
    assert after in (200, 503)


def test_metrics_need_their_token_and_name_at_most_twenty_agents(
    module_env, worker, tmp_path, agents
):
    path = tmp_path / "tokens.json"
    TokenFile(path).create(ADMIN)
    proc, base, _ = serve(
        module_env, "mcp-metrics-token", path, MESSAGE_BUS_METRICS_TOKEN=METRICS_TOKEN
    )
    bus = module_env.bus()
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": METRICS_TOKEN}):
            assert httpx.get(f"{base}/metrics", headers=headers, timeout=10).status_code == 401
        sender = agents("sender")
        receivers = [agents(f"deep{i:02d}") for i in range(30)]
        for i, receiver in enumerate(receivers):
            bus.read(receiver)
            for n in range(1 + i % 3):
                bus.send_message({"from": sender, "to": receiver, "payload": n})
        auth = {"Authorization": f"Bearer {METRICS_TOKEN}"}

        def scrape():
            text = httpx.get(f"{base}/metrics", headers=auth, timeout=10).text
            return text if 'agent="_other"' in text else None

        text = wait_for(scrape, 30, "the inbox gauges with an _other series")
        labels = set(re.findall(r'message_bus_inbox_depth\{agent="([^"]+)"\}', text))
        assert len(labels) <= 21 and "_other" in labels, sorted(labels)
    finally:
        with contextlib.suppress(Exception):
            bus.close()
        stop(proc)


def test_metrics_without_a_token_are_for_this_machine_only(module_env, worker, tmp_path):
    path = tmp_path / "tokens.json"
    TokenFile(path).create(ADMIN)
    proc, base, port = serve(module_env, "mcp-metrics-local", path, host="0.0.0.0")
    try:
        local = httpx.get(f"{base}/metrics", timeout=10)
        assert local.status_code == 200 and "message_bus_" in local.text  # the control
        # From this machine's other address: the peer is not loopback. The Host is one of
        # ours, so it is the scrape rule that refuses, not the Host check.
        outside = httpx.get(
            f"http://{outside_address()}:{port}/metrics",
            headers={"Host": f"localhost:{port}"},
            timeout=10,
        )
        assert outside.status_code == 403, outside.text
        assert "MESSAGE_BUS_METRICS_TOKEN" in outside.text and "message_bus_" not in outside.text
    finally:
        stop(proc)


def test_a_server_bound_to_ipv6_loopback_serves_and_scrapes_there(module_env, worker, tmp_path):
    """`--host ::1` once crashed at start (its URL had no brackets); a scrape over IPv6
    loopback is this machine's."""
    path = tmp_path / "tokens.json"
    alice = TokenFile(path).create("alice")
    proc, base, _ = serve(module_env, "mcp-ipv6", path, host="::1")
    try:
        scrape = httpx.get(f"{base}/metrics", timeout=10)
        assert scrape.status_code == 200 and "message_bus_" in scrape.text

        assert history_count(base, alice) == 0
    finally:
        stop(proc)
