"""The stdio server as Claude Code meets it, over raw JSON-RPC: the `server/discover` probe
is refused so the handshake era (where channels work) is negotiated, the channel capability
is declared, and mail landing in the agent's inbox rings a `notifications/claude/channel`
that is only a doorbell: the message stays readable and ackable."""

from __future__ import annotations

import sys

import pytest

from tests.support.paths import ARTIFACTS, ROOT
from tests.support.rawstdio import HANDSHAKE, RawStdio
from tests.support.waiting import holds_for, wait_for

pytestmark = pytest.mark.timeout(120)

CHANNEL = "notifications/claude/channel"


def server(env, agent, *extra):
    ARTIFACTS.mkdir(exist_ok=True)
    return RawStdio(
        [sys.executable, "-m", "msgbus", "mcp", "--agent", agent, *extra],
        env.env(),
        ROOT,
        ARTIFACTS / f"mcp-stdio-{agent}.log",
    )


def bells(client):
    return [f["params"] for f in client.notifications(CHANNEL)]


def delivered(bus, ids):
    wait_for(lambda: all(bus.status(i).status == "delivered" for i in ids), 30, "delivery")


def test_the_probe_is_refused_so_claude_code_gets_the_handshake_era_and_the_capability(
    module_env, worker, agents
):
    with server(module_env, agents("bob")) as bob:
        probe, init = bob.open_like_claude_code()
        assert probe["error"]["code"] == -32601  # method not found: the client falls back
        assert init["protocolVersion"] == HANDSHAKE
        assert init["capabilities"]["experimental"] == {"claude/channel": {}}
        assert init["capabilities"]["tools"] is not None
        assert init["serverInfo"]["name"] == "agent-message-bus"
        assert init["serverInfo"]["version"]  # not "" as the SDK's default
        assert "read_messages" in init["instructions"] and "channel" in init["instructions"]
        # The handshake era has no listen streams; resources/subscribe is its push path.
        listen = bob.request("subscriptions/listen", {"filter": {}})
        assert listen["error"]["code"] == -32601
        tools = bob.request("tools/list")["result"]["tools"]
        assert "read_messages" in {t["name"] for t in tools}


def test_a_delivery_rings_the_channel_with_its_id_and_the_message_stays_unread(
    module_env, bus, agents
):
    alice, bob_id = agents("alice"), agents("bob")
    with server(module_env, bob_id) as bob:
        bob.open_like_claude_code()
        holds_for(lambda: bells(bob) == [], 1.0, "no bell while nothing is waiting")
        receipt = bus.send_message(
            {
                "from": alice,
                "to": bob_id,
                "type": "request",
                "payload": {"q": "status of PR 42?"},
                "metadata": {"priority": "high"},
                "correlation_id": "job-7",
            }
        )
        bell = bob.wait_for(lambda f: f.get("method") == CHANNEL, 15, "a channel bell")["params"]
        meta = bell["meta"]
        assert meta["message_id"] == receipt.id
        assert (meta["from"], meta["type"], meta["priority"]) == (alice, "request", "high")
        assert meta["correlation_id"] == "job-7" and meta["new"] == "1"
        assert all(isinstance(v, str) for v in meta.values())
        assert "\n" not in bell["content"]
        assert alice in bell["content"] and '{"q":"status of PR 42?"}' in bell["content"]
        assert "read_messages" in bell["content"]

        # A doorbell, not a delivery: still unread, then read and acked as usual.
        assert bus.status(receipt.id).status == "delivered"
        read = bob.call_tool("read_messages", {"wait_seconds": 0})
        assert [m["id"] for m in read["messages"]] == [receipt.id]
        assert read["unread"] == 0
        assert bob.call_tool("ack_messages", {"ids": [receipt.id]})["acked"] == 1
        assert bus.status(receipt.id).status == "acked"
        holds_for(lambda: len(bells(bob)) == 1, 1.5, "one bell for one message")

        # Positive control: the next message rings again, with its own id.
        second = bus.send_message({"from": alice, "to": bob_id, "payload": "and another"})
        wait_for(lambda: len(bells(bob)) == 2, 15, "the second bell")
        assert bells(bob)[1]["meta"]["message_id"] == second.id
        assert bells(bob)[1]["meta"]["type"] == "event"
        bob.call_tool("ack_messages", {"ids": [second.id]})


def test_a_burst_of_20_rings_at_least_once_and_at_most_20_times_and_all_stay_readable(
    module_env, bus, agents
):
    alice, bob_id = agents("alice"), agents("bob")
    with server(module_env, bob_id) as bob:
        bob.open_like_claude_code()
        receipts = bus.send_batch(
            [{"from": alice, "to": bob_id, "payload": {"n": n}} for n in range(20)]
        )
        ids = {r.id for r in receipts}
        delivered(bus, ids)

        def covered():
            return sum(int(b["meta"]["new"]) for b in bells(bob))

        wait_for(lambda: covered() == 20, 15, "bells covering all 20 messages")
        holds_for(lambda: covered() == 20, 1.5, "no message rung twice")
        rung = bells(bob)
        assert 1 <= len(rung) <= 20
        assert {b["meta"]["message_id"] for b in rung} <= ids
        assert len({b["meta"]["message_id"] for b in rung}) == len(rung)
        if len(rung) < 20:  # a bell for several says how many
            assert any("new messages" in b["content"] for b in rung)

        read = bob.call_tool("read_messages", {"limit": 50, "wait_seconds": 0})
        assert {m["id"] for m in read["messages"]} == ids
        assert bob.call_tool("ack_messages", {"ids": sorted(ids)})["acked"] == 20
        assert all(bus.status(i).status == "acked" for i in ids)


def test_mail_waiting_when_the_session_starts_rings_once(module_env, bus, agents):
    alice, bob_id = agents("alice"), agents("bob")
    waiting = [bus.send_message({"from": alice, "to": bob_id, "payload": n}).id for n in (1, 2)]
    delivered(bus, waiting)
    with server(module_env, bob_id) as bob:
        bob.open_like_claude_code()
        bell = bob.wait_for(lambda f: f.get("method") == CHANNEL, 15, "the opening bell")
        assert bell["params"]["meta"]["new"] == "2" and bell["params"]["meta"]["unread"] == "2"
        assert bell["params"]["content"].startswith("2 new messages")
        holds_for(lambda: len(bells(bob)) == 1, 1.0, "a single opening bell")
        read = bob.call_tool("read_messages", {"wait_seconds": 0})
        bob.call_tool("ack_messages", {"ids": [m["id"] for m in read["messages"]]})
        assert sorted(m["id"] for m in read["messages"]) == sorted(waiting)


def test_no_bell_before_the_client_says_initialized(module_env, bus, agents):
    alice, bob_id = agents("alice"), agents("bob")
    waiting = bus.send_message({"from": alice, "to": bob_id, "payload": "early"}).id
    delivered(bus, [waiting])
    with server(module_env, bob_id) as bob:
        bob.request(
            "initialize",
            {
                "protocolVersion": HANDSHAKE,
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"},
            },
        )
        holds_for(lambda: bells(bob) == [], 1.0, "silence before notifications/initialized")
        bob.notify("notifications/initialized")
        bob.wait_for(lambda f: f.get("method") == CHANNEL, 15, "the bell after initialized")
        bus.ack(bob_id, [waiting])


def test_modern_flag_answers_the_probe_and_declares_no_channel(module_env, worker, agents):
    with server(module_env, agents("carol"), "--modern") as carol:
        probe, _ = (
            carol.request(
                "server/discover",
                {
                    "_meta": {
                        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "0"},
                        "io.modelcontextprotocol/clientCapabilities": {},
                    }
                },
            ),
            None,
        )
        assert "2026-07-28" in probe["result"]["supportedVersions"]
        assert not (probe["result"]["capabilities"].get("experimental") or {})
