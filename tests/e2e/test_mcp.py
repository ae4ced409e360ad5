"""The MCP server as agents use it: real server processes (stdio and HTTP), a real celery
worker, and the `mcp` package's own client."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx
import pytest
from mcp import StdioServerParameters
from mcp.client import Client

from bus.tokens import TokenFile
from tests.support.contract import CORE_TOOLS, FULL_TOOLS
from tests.support.mcp import ResourceUpdates, call, error_of, http, run, stdio
from tests.support.paths import ROOT
from tests.support.processes import PrivateRedis, free_port
from tests.support.waiting import wait_for
from tests.support.web import start_http_server

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def http_server(module_env, worker, tmp_path_factory):
    tokens_path = tmp_path_factory.mktemp("mcp") / "tokens.json"
    tokens = TokenFile(tokens_path)
    issued = {name: tokens.create(name) for name in ("http-alice", "http-bob", "http-ops")}
    proc, url = start_http_server(
        module_env,
        "mcp-http",
        tokens_path,
        "--profile",
        "full",
        "--log-level",
        "INFO",
        MESSAGE_BUS_ADMINS='["http-ops"]',
    )
    yield url, issued, tokens
    proc.terminate()
    proc.wait(15)


def test_two_stdio_agents_send_read_ack_and_see_it_in_history(module_env, worker, agents):
    alice, bob = agents("alice"), agents("bob")

    async def scenario():
        async with stdio(module_env, alice) as a, stdio(module_env, bob) as b:
            # The SDK's client probes server/discover, is refused, and shakes hands.
            assert b.protocol_version == "2025-11-25"
            sent = await call(
                a,
                "send_message",
                {"to": bob, "type": "command", "payload": {"task": 7}, "priority": "high"},
            )
            assert sent == {"id": sent["id"], "status": "queued", "unread": 0}
            read = await call(b, "read_messages", {"wait_seconds": 10})
            assert read["count"] == 1 and read["unread"] == 0
            (m,) = read["messages"]
            assert (m["id"], m["from"], m["type"]) == (sent["id"], alice, "command")
            assert m["payload"] == {"task": 7} and m["priority"] == "high"
            assert set(m) == {"id", "from", "type", "priority", "time", "payload"}
            assert (await call(b, "ack_messages", {"ids": [m["id"]]})) == {"acked": 1, "unread": 0}
            assert (await call(a, "message_status", {"id": sent["id"]}))["status"] == "acked"
            for client in (a, b):
                history = await call(client, "get_history")
                assert [h["id"] for h in history["messages"]] == [sent["id"]]
            full = (await call(b, "get_history", {"full": True}))["messages"][0]
            assert (full["to"], full["metadata"]["priority"]) == (bob, "high")
            # Whole, but for the signature: an HMAC under the bus's secret, which an LLM agent
            # cannot check and which would test guesses of the secret offline.
            assert full.get("signature") is None and full["trace_id"] and full["verified"]
            resource = await b.read_resource(f"message-bus://history/{bob}")
            assert [h["id"] for h in json.loads(resource.contents[0].text)] == [sent["id"]]
            listed = await a.list_resources()
            assert f"message-bus://history/{bob}" in {str(r.uri) for r in listed.resources}

    run(scenario())


def test_http_agents_with_tokens_and_a_bad_token_gets_401(http_server):
    url, issued, _ = http_server

    async def scenario():
        async with http(url, issued["http-alice"]) as a, http(url, issued["http-bob"]) as b:
            sent = await call(a, "send_message", {"to": "http-bob", "payload": "over http"})
            read = await call(b, "read_messages", {"wait_seconds": 10})
            assert [m["id"] for m in read["messages"]] == [sent["id"]]
            assert read["messages"][0]["from"] == "http-alice"
            await call(b, "ack_messages", {"ids": [sent["id"]]})

    run(scenario())
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        response = httpx.post(f"{url}/mcp", json=body, headers=headers, timeout=10)
        assert response.status_code == 401


def test_revoked_token_is_refused_at_once(http_server):
    url, _, tokens = http_server
    token = tokens.create("http-temp")
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
    assert httpx.post(f"{url}/mcp", json=body, headers=headers, timeout=10).status_code != 401
    tokens.revoke(token=token)
    assert httpx.post(f"{url}/mcp", json=body, headers=headers, timeout=10).status_code == 401


def test_foreign_origin_is_refused(http_server):
    url, issued, _ = http_server
    headers = {
        "Authorization": f"Bearer {issued['http-alice']}",
        "Origin": "http://evil.example",
        "Accept": "application/json, text/event-stream",
    }
    response = httpx.post(
        f"{url}/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers=headers,
        timeout=10,
    )
    assert response.status_code == 403


def test_topic_filters_broadcast_and_request_response(module_env, worker, agents):
    alice, bob, carol = agents("alice"), agents("bob"), agents("carol")
    topic = agents("jobs")

    async def answer_loop(client, stop):
        while not stop.is_set():
            read = await call(client, "read_messages", {"wait_seconds": 1})
            for m in read["messages"]:
                if m.get("type") == "request":
                    await call(
                        client,
                        "send_message",
                        {
                            "to": m.get("reply_to", m["from"]),  # left out: the sender
                            "type": "response",
                            "correlation_id": m["id"],
                            "payload": {"answer": m["payload"]["q"] * 2},
                        },
                    )
                await call(client, "ack_messages", {"ids": [m["id"]]})

    async def scenario():
        async with (
            stdio(module_env, alice) as a,
            stdio(module_env, bob) as b,
            stdio(module_env, carol) as c,
        ):
            await call(b, "subscribe", {"topics": [topic], "priorities": ["high"]})
            await call(c, "subscribe", {"topics": [topic]})
            await call(a, "send_message", {"topic": topic, "payload": 1, "priority": "low"})
            high = await call(a, "send_message", {"topic": topic, "payload": 2, "priority": "high"})
            got_c = []
            while len(got_c) < 2:
                got_c += (await call(c, "read_messages", {"wait_seconds": 5}))["messages"]
            got_b = (await call(b, "read_messages", {"wait_seconds": 5}))["messages"]
            assert [m["id"] for m in got_b] == [high["id"]]
            await call(b, "ack_messages", {"ids": [m["id"] for m in got_b]})
            await call(c, "ack_messages", {"ids": [m["id"] for m in got_c]})

            cast = await call(a, "send_message", {"broadcast": True, "payload": "all"})
            for client in (b, c):
                got = (await call(client, "read_messages", {"wait_seconds": 5}))["messages"]
                assert cast["id"] in [m["id"] for m in got]
                await call(client, "ack_messages", {"ids": [m["id"] for m in got]})

            stop = asyncio.Event()
            responder = asyncio.create_task(answer_loop(b, stop))
            result = await call(
                a, "request", {"to": bob, "payload": {"q": 21}, "timeout_seconds": 20}
            )
            stop.set()
            await responder
            assert result["status"] == "answered"
            assert result["response"]["payload"] == {"answer": 42}
            assert result["response"]["correlation_id"] == result["request_id"]
            timeout = await call(
                a, "request", {"to": carol, "payload": {"q": 1}, "timeout_seconds": 1}
            )
            assert timeout["status"] == "timeout" and timeout["request_id"]

    run(scenario())


def test_push_notification_reaches_a_listening_client_within_a_second(module_env, worker, agents):
    alice, bob = agents("alice"), agents("bob")
    uri = f"message-bus://inbox/{bob}"

    async def scenario():
        # subscriptions/listen is of the 2026-07-28 era: stdio serves it with --modern.
        async with stdio(module_env, alice) as a, stdio(module_env, bob, "core", "--modern") as b:
            assert b.protocol_version == "2026-07-28"
            async with b.listen(resource_subscriptions=[uri]) as subscription:
                sent_at = time.monotonic()
                await call(a, "send_message", {"to": bob, "payload": "ping"})
                event = await asyncio.wait_for(subscription.__aiter__().__anext__(), 5)
                elapsed = time.monotonic() - sent_at
            assert getattr(event, "uri", None) == uri
            assert elapsed < 1.0, f"push took {elapsed:.3f}s"

    run(scenario())


@pytest.mark.filterwarnings("ignore:resources/subscribe is removed")
def test_legacy_resources_subscribe_gets_resource_updated(module_env, worker, agents):
    alice, bob = agents("alice"), agents("bob")
    uri = f"message-bus://inbox/{bob}"

    async def scenario():
        updates = ResourceUpdates()
        async with (
            stdio(module_env, alice) as a,
            Client(
                StdioServerParameters(
                    command=sys.executable,
                    args=["-m", "msgbus", "mcp", "--agent", bob],
                    env=module_env.env(),
                    cwd=str(ROOT),
                ),
                mode="legacy",
                message_handler=updates,
            ) as b,
        ):
            await b.subscribe_resource(uri)
            await call(a, "send_message", {"to": bob, "payload": "ping"})
            await asyncio.wait_for(updates.arrived.wait(), 5)
            with pytest.raises(Exception, match="may subscribe only"):
                await b.subscribe_resource(f"message-bus://inbox/{alice}")
        assert updates.uris[0] == uri

    run(scenario())


def test_bad_input_gives_clear_tool_errors_and_changes_nothing(module_env, worker, agents):
    alice, bob = agents("alice"), agents("bob")

    async def scenario():
        async with stdio(module_env, alice) as a:
            assert "agent id 'Bob Smith' must match" in await error_of(
                a, "send_message", {"to": "Bob Smith", "payload": 1}
            )
            assert "MESSAGE_BUS_MAX_PAYLOAD_BYTES" in await error_of(
                a, "send_message", {"to": bob, "payload": "x" * (1024 * 1024 + 10)}
            )
            assert "priority" in await error_of(
                a, "send_message", {"to": bob, "payload": 1, "priority": "urgent"}
            )
            assert "say where it goes" in await error_of(a, "send_message", {"payload": 1})
            assert "no_such_arg" in await error_of(a, "read_messages", {"no_such_arg": 1})
            assert "may not read the messages of" in await error_of(
                a, "get_history", {"agent_id": bob}
            )
            with pytest.raises(Exception, match="may not read the messages of"):
                await a.read_resource(f"message-bus://inbox/{bob}")
            history = await call(a, "get_history")
            assert history["count"] == 0

    run(scenario())


def test_tools_list_matches_each_profile_and_every_tool_has_an_output_schema(module_env, worker):
    async def scenario():
        for profile, expected in (("core", CORE_TOOLS), ("full", FULL_TOOLS)):
            async with stdio(module_env, "lister", profile) as client:
                tools = (await client.list_tools()).tools
                assert sorted(t.name for t in tools) == sorted(expected)
                for tool in tools:
                    assert tool.output_schema, tool.name
                    assert tool.description, tool.name

    run(scenario())


def test_admin_tools_are_refused_to_non_admins(http_server):
    url, issued, _ = http_server

    async def scenario():
        async with http(url, issued["http-alice"]) as a:
            assert "admin only" in await error_of(a, "replay_dead_letters", {"all": True})
            assert "admin only" in await error_of(a, "list_dead_letters", {})
        async with http(url, issued["http-ops"]) as ops:
            letters = await call(ops, "list_dead_letters", {})
            assert letters["count"] >= 0
            health = await call(ops, "health")
            assert health["redis"] == "ok" and health["workers"]

    run(scenario())


def test_tools_fail_fast_while_redis_is_down_and_recover_without_restart(
    module_env, tmp_path, agents
):
    redis_ = PrivateRedis(free_port(), tmp_path)
    redis_.start()
    alice = agents("alice")
    try:

        async def scenario():
            async with stdio(module_env, alice, MESSAGE_BUS_REDIS_URL=redis_.url) as a:
                assert (await call(a, "read_messages", {"wait_seconds": 0}))["count"] == 0
                redis_.stop()
                started = time.monotonic()
                text = await error_of(a, "read_messages", {})
                assert "bus unavailable: Redis cannot be reached" in text
                assert time.monotonic() - started < 5
                redis_.start()
                assert (await call(a, "read_messages", {"wait_seconds": 0}))["count"] == 0

        run(scenario())
    finally:
        redis_.stop()


def test_every_result_counts_the_callers_unread_mail_and_errors_mention_it(module_env, bus, agents):
    alice, bob = agents("alice"), agents("bob")
    ids = [bus.send_message({"from": alice, "to": bob, "payload": n}).id for n in (1, 2)]
    wait_for(lambda: all(bus.status(i).status == "delivered" for i in ids), 30, "delivery")

    async def scenario():
        async with stdio(module_env, bob) as b:
            calls = [
                ("send_message", {"to": alice, "payload": "x"}),
                ("subscribe", {"topics": [agents("t")]}),
                ("unsubscribe", {"topics": [agents("t")]}),
                ("get_history", {"limit": 1}),
                ("message_status", {"id": ids[0]}),
                ("ack_messages", {"ids": ["not-an-id"]}),
            ]
            for tool, args in calls:
                assert (await call(b, tool, args))["unread"] == 2, tool
            read = await call(b, "read_messages", {"limit": 1, "wait_seconds": 0})
            assert read["count"] == 1 and read["unread"] == 1
            text = await error_of(b, "message_status", {"id": "no-such-id"})
            assert "check the id" in text and "you have 1 unread" in text
            rest = await call(b, "read_messages", {"wait_seconds": 0})
            acked = await call(b, "ack_messages", {"ids": ids + ["not-an-id"]})
            assert acked["acked"] == 2 and acked["not_found"] == ["not-an-id"] and acked["note"]
            assert rest["unread"] == 0 and acked["unread"] == 0
            assert "unread" not in await error_of(b, "message_status", {"id": "no-such-id"})

    run(scenario())


def test_read_messages_waits_by_default_and_returns_as_soon_as_mail_lands(module_env, bus, agents):
    alice, bob = agents("alice"), agents("bob")

    async def scenario():
        async with stdio(module_env, bob) as b:
            tools = {t.name: t for t in (await b.list_tools()).tools}
            assert (
                tools["read_messages"].input_schema["properties"]["wait_seconds"]["default"] == 20
            )
            started = time.monotonic()
            reading = asyncio.create_task(call(b, "read_messages"))  # no wait_seconds given
            await asyncio.sleep(1.0)  # the read is waiting, not returned empty
            assert not reading.done()
            sent = await asyncio.to_thread(
                bus.send_message, {"from": alice, "to": bob, "payload": "late mail"}
            )
            read = await asyncio.wait_for(reading, 15)
            elapsed = time.monotonic() - started
            assert [m["id"] for m in read["messages"]] == [sent.id]
            assert elapsed < 10, f"returned {elapsed:.1f}s after the call, not promptly"
            await call(b, "ack_messages", {"ids": [sent.id]})

    run(scenario())
