"""The MCP HTTP server in several processes on one port (`msgbus mcp --http --processes 2`),
as agents use it: every request on a fresh connection, so the kernel spreads them over the
processes, and sessions, tokens and push work whichever process a request reaches."""

from __future__ import annotations

import asyncio
import http.client
import select
import subprocess
import sys

import httpx
import httpx2
import psutil
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from bus.tokens import TokenFile
from tests.support.mcp import ResourceUpdates, call, run
from tests.support.paths import ARTIFACTS, ROOT
from tests.support.processes import free_port
from tests.support.waiting import holds_for, wait_for
from tests.support.web import wait_http_up

pytestmark = pytest.mark.timeout(180)

PROCESSES = 2
CALLS = 12  # on fresh connections: all on one process of two is a chance of 1 in 2,048


@pytest.fixture(scope="module")
def server(module_env, worker, tmp_path_factory):
    tokens_path = tmp_path_factory.mktemp("mcp") / "tokens.json"
    tokens = TokenFile(tokens_path)
    issued = {name: tokens.create(name) for name in ("procs-alice", "procs-bob")}
    port = free_port()
    log = ARTIFACTS / f"mcp-processes-{module_env.vhost}.log"
    argv = ["--http", "--port", str(port), "--tokens-file", str(tokens_path)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "msgbus", "mcp", *argv, "--processes", str(PROCESSES)],
        cwd=ROOT,
        env=module_env.env(),
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    wait_http_up(proc, log, url, 60)
    yield url, port, proc, issued
    proc.terminate()
    proc.wait(30)


def fresh_connections(url, token, **kwargs):
    """An SDK client that opens a new connection for every request."""
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
        limits=httpx2.Limits(max_keepalive_connections=0),
    )
    return Client(streamable_http_client(f"{url}/mcp", http_client=http), **kwargs)


def listening_processes(proc, port):
    children = psutil.Process(proc.pid).children()
    return [
        p
        for p in children
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in p.net_connections())
    ]


def test_several_processes_listen_on_the_one_port(server):
    url, port, proc, _ = server
    assert len(listening_processes(proc, port)) == PROCESSES
    # Each process answers /readyz from its own check, every one of them ready in time.
    wait_for(
        lambda: all(httpx.get(f"{url}/readyz", timeout=5).status_code == 200 for _ in range(8)),
        30,
        "every process ready",
    )


@pytest.mark.filterwarnings("ignore:resources/subscribe is removed")
def test_a_handshake_session_calls_and_gets_its_push_across_processes(server):
    url, _, _, issued = server

    async def scenario():
        updates = ResourceUpdates()
        async with (
            fresh_connections(url, issued["procs-alice"]) as alice,
            fresh_connections(
                url, issued["procs-bob"], mode="legacy", message_handler=updates
            ) as bob,
        ):
            assert bob.protocol_version == "2025-11-25"  # a session, with its own id
            await bob.subscribe_resource("message-bus://inbox/procs-bob")
            for i in range(CALLS):
                await call(alice, "send_message", {"to": "procs-bob", "payload": i})
                # the push on bob's session stream
                await asyncio.wait_for(updates.arrived.wait(), 10)
                updates.arrived.clear()
            messages: list[dict] = []
            for _ in range(CALLS):  # a push may have come before the last delivery
                read = await call(bob, "read_messages", {"limit": CALLS, "wait_seconds": 5})
                messages += read["messages"]
                if len(messages) >= CALLS:
                    break
            assert sorted(m["payload"] for m in messages) == list(range(CALLS))
            acked = await call(bob, "ack_messages", {"ids": [m["id"] for m in messages]})
            assert acked["acked"] == CALLS
        assert set(updates.uris) == {"message-bus://inbox/procs-bob"}

    run(scenario())


def test_listen_push_and_long_poll_reach_a_client_on_any_process(server):
    url, _, _, issued = server
    uri = "message-bus://inbox/procs-alice"

    async def scenario():
        async with (
            fresh_connections(url, issued["procs-alice"]) as alice,
            fresh_connections(url, issued["procs-bob"]) as bob,
        ):
            assert alice.protocol_version == "2026-07-28"
            for i in range(4):
                async with alice.listen(resource_subscriptions=[uri]) as stream:
                    await call(bob, "send_message", {"to": "procs-alice", "payload": i})
                    event = await asyncio.wait_for(stream.__aiter__().__anext__(), 10)
                assert getattr(event, "uri", None) == uri
                read = await call(alice, "read_messages", {"wait_seconds": 10})
                assert [m["payload"] for m in read["messages"]] == [i]
                await call(alice, "ack_messages", {"ids": [read["messages"][0]["id"]]})

    run(scenario())


def test_a_bad_token_is_refused_by_every_process(server):
    url, _, _, issued = server
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream"}
    statuses = set()
    for token in ("mb_wrong", issued["procs-alice"]) * CALLS:
        with httpx.Client(headers={"Authorization": f"Bearer {token}"} | headers) as fresh:
            answer = fresh.post(f"{url}/mcp", json=body, timeout=10)
        statuses.add((token == "mb_wrong", answer.status_code == 401))
    assert statuses == {(True, True), (False, False)}  # the good token is the control


def test_a_second_server_on_the_port_is_refused_not_joined(server, module_env, tmp_path):
    """SO_REUSEPORT would let a second server of the same user share the port: refused."""
    url, port, _, issued = server
    tokens = tmp_path / "tokens.json"
    TokenFile(tokens).create("procs-other")
    argv = ["--http", "--port", str(port), "--tokens-file", str(tokens), "--processes", "2"]
    done = subprocess.run(
        [sys.executable, "-m", "msgbus", "mcp", *argv],
        cwd=ROOT,
        env=module_env.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "cannot listen" in done.stderr, done.stderr[-2000:]
    # The first server still answers its own tokens, every time.
    headers = {"Authorization": f"Bearer {issued['procs-alice']}"}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    for _ in range(CALLS):
        answer = httpx.post(f"{url}/mcp", json=body, headers=headers, timeout=10)
        assert answer.status_code != 401


def test_an_idle_connection_outlives_the_clients_keep_alive(server):
    """A client keeps an idle connection up to its own expiry (httpx 5 s) and then sends its
    next request on it; a server closing idle connections at the same moment would answer
    that request with a closed socket."""
    url, port, _, _ = server
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def get() -> int:
        connection.request("GET", "/healthz")
        answer = connection.getresponse()
        answer.read()
        return answer.status

    try:
        assert get() == 200  # the control: the connection is open and answers
        # Nothing may arrive on the idle connection (a close is an end of file), for longer
        # than the client would keep it; then the same connection answers again.
        holds_for(
            lambda: not select.select([connection.sock], [], [], 0)[0],
            httpx2.Limits().keepalive_expiry + 1,
            "the idle connection staying open",
        )
        assert get() == 200
    finally:
        connection.close()
