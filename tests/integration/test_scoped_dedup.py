"""Dedup keys and message ids belong to their sender: two senders' equal keys are two
messages; one sender's retry is a duplicate, delivered once; another sender reusing an id
is refused as such (not "duplicate"), and learns nothing of the first sender's message.
Through the Python API, the CLI and the MCP tools (the real server object and client)."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from mcp.client import Client

from bus.errors import ValidationError
from mcp_server.identity import Identity
from mcp_server.server import build_server
from tests.support.inbox import read_all
from tests.support.processes import msgbus
from tests.support.waiting import holds_for

pytestmark = pytest.mark.timeout(120)

QUIET = 1.5  # seconds a second copy is given to show up (it would come in milliseconds)


def nothing_more(bus, agent, seconds=QUIET):
    holds_for(lambda: bus.read(agent, limit=10) == [], seconds, f"{agent}'s inbox staying empty")


def mcp_call(env, agent, tool, args):
    server, _ = build_server(env.settings(), Identity.stdio(agent), "full")

    async def call():
        async with Client(server) as client:
            return await client.call_tool(tool, args)

    try:
        return asyncio.run(call())
    finally:
        server.bus.close()


def test_two_senders_with_the_same_dedup_key_are_both_delivered(bus, agents):
    alice, bob, carol = agents("alice"), agents("bob"), agents("carol")
    a = bus.send_message(
        {"from": alice, "to": carol, "payload": "from alice", "metadata": {"dedup_key": "task-42"}}
    )
    b = bus.send_message(
        {"from": bob, "to": carol, "payload": "from bob", "metadata": {"dedup_key": "task-42"}}
    )
    assert (a.status.value, b.status.value) == ("queued", "queued")
    assert a.id != b.id and b.duplicate_of is None
    got = read_all(bus, carol, 2)
    assert sorted((m.sender, m.payload) for m in got) == [(alice, "from alice"), (bob, "from bob")]
    nothing_more(bus, carol)


def test_a_retry_with_the_same_dedup_key_is_a_duplicate_and_delivered_once(bus, agents):
    alice, bob, carol = agents("alice"), agents("bob"), agents("carol")
    key = {"dedup_key": "task-42"}
    first = bus.send_message({"from": alice, "to": carol, "payload": 1, "metadata": key})
    again = bus.send_message({"from": alice, "to": carol, "payload": 2, "metadata": key})
    assert again.status.value == "duplicate" and again.duplicate_of == first.id
    bobs = bus.send_message({"from": bob, "to": carol, "payload": 3, "metadata": key})
    bobs_again = bus.send_message({"from": bob, "to": carol, "payload": 4, "metadata": key})
    assert bobs.status.value == "queued"
    assert bobs_again.status.value == "duplicate" and bobs_again.duplicate_of == bobs.id
    got = read_all(bus, carol, 2)
    assert sorted((m.sender, m.payload) for m in got) == [(alice, 1), (bob, 3)]
    nothing_more(bus, carol)
    assert bus.status(first.id).status.value == "acked"


@pytest.mark.parametrize("alices_id", ["her own", "made by the bus"])
def test_reusing_another_senders_message_id_is_refused_and_reveals_nothing(bus, agents, alices_id):
    alice, bob, carol, dave = agents("alice"), agents("bob"), agents("carol"), agents("dave")
    secret = {"secret": "alice's eyes only " + uuid.uuid4().hex}
    message = {"from": alice, "to": carol, "payload": secret}
    if alices_id == "her own":
        message["id"] = str(uuid.uuid4())
    mine = bus.send_message(message).id
    [got] = read_all(bus, carol, 1)
    assert got.id == mine

    with pytest.raises(ValidationError) as refused:
        bus.send_message({"id": mine, "from": bob, "to": dave, "payload": "bob's"})
    text = refused.value.message
    assert "belongs to another sender" in text and "duplicate" not in text, text
    assert alice not in text and secret["secret"] not in text and carol not in text, text
    assert refused.value.fields == {"id": mine}
    nothing_more(bus, dave)
    assert [h.id for h in bus.history(bob)] == []
    status = bus.status(mine)
    assert (status.status.value, status.sender) == ("acked", alice)
    assert [h.payload for h in bus.history(carol) if h.id == mine] == [secret]

    # Her own retry under her id is the duplicate it is.
    retry = bus.send_message({**message, "id": mine})
    assert (retry.status.value, retry.duplicate_of) == ("duplicate", mine)
    nothing_more(bus, carol)


def test_a_batch_carrying_another_senders_id_is_refused_whole(bus, agents):
    alice, bob, dave = agents("alice"), agents("bob"), agents("dave")
    mine = bus.send_message({"from": alice, "to": agents("carol"), "payload": 1}).id
    with pytest.raises(ValidationError, match="belongs to another sender"):
        bus.send_batch(
            [
                {"from": bob, "to": dave, "payload": "first"},
                {"id": mine, "from": bob, "to": dave, "payload": "second"},
            ]
        )
    nothing_more(bus, dave)
    assert bus.history(bob) == []


def test_a_batch_with_one_key_twice_delivers_it_once(bus, agents):
    alice, carol = agents("alice"), agents("carol")
    key = {"dedup_key": "batch-key"}
    receipts = bus.send_batch(
        [
            {"from": alice, "to": carol, "payload": 1, "metadata": key},
            {"from": alice, "to": carol, "payload": 2, "metadata": key},
        ]
    )
    assert [r.status.value for r in receipts] == ["queued", "duplicate"]
    assert receipts[1].duplicate_of == receipts[0].id
    assert [m.payload for m in read_all(bus, carol, 1)] == [1]
    nothing_more(bus, carol)


def test_the_cli_scopes_dedup_keys_by_sender(module_env, bus, agents):
    alice, bob, carol = agents("alice"), agents("bob"), agents("carol")

    def send(sender, payload):
        out = msgbus(
            module_env,
            "send",
            "--from",
            sender,
            "--to",
            carol,
            "--dedup-key",
            "task-42",
            f"--payload={payload}",
            "--json",
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    a, a_again, b = send(alice, "1"), send(alice, "2"), send(bob, "3")
    assert (a["status"], a_again["status"], b["status"]) == ("queued", "duplicate", "queued")
    assert a_again["duplicate_of"] == a["id"]
    got = read_all(bus, carol, 2)
    assert sorted((m.sender, m.payload) for m in got) == [(alice, 1), (bob, 3)]
    nothing_more(bus, carol)

    stolen = msgbus(
        module_env,
        "send",
        "--from",
        bob,
        "--message",
        json.dumps({"id": a["id"], "to": carol, "payload": "bob's"}),
    )
    assert stolen.returncode == 2, stolen
    assert stolen.stderr.startswith("error: id ") and "belongs to another sender" in stolen.stderr
    assert alice not in stolen.stderr
    nothing_more(bus, carol)


def test_mcp_agents_with_the_same_dedup_key_are_both_delivered_and_retries_are_duplicates(
    module_env, bus, agents
):
    alice, bob, carol = agents("alice"), agents("bob"), agents("carol")
    args = {"to": carol, "payload": "p", "dedup_key": "task-42"}
    results = [mcp_call(module_env, who, "send_message", args) for who in (alice, alice, bob)]
    assert not any(r.is_error for r in results), [r.content[0].text for r in results]
    a, a_again, b = (r.structured_content for r in results)
    assert (a["status"], a_again["status"], b["status"]) == ("queued", "duplicate", "queued")
    assert a_again["duplicate_of"] == a["id"] and b.get("duplicate_of") is None  # compact view
    got = read_all(bus, carol, 2)
    assert sorted(m.sender for m in got) == sorted([alice, bob])
    nothing_more(bus, carol)

    batch = mcp_call(
        module_env,
        bob,
        "send_batch",
        {"messages": [{"to": carol, "payload": "again", "dedup_key": "task-42"}]},
    )
    assert not batch.is_error, batch.content[0].text
    [receipt] = batch.structured_content["receipts"]
    assert (receipt["status"], receipt["duplicate_of"]) == ("duplicate", b["id"])
    nothing_more(bus, carol)


def test_an_mcp_agent_cannot_read_the_status_of_another_agents_message(module_env, bus, agents):
    """Status says who sent a message, to how many, and why it failed: it is checked like
    history (DESIGN: status is authorized through the identity-bound handle)."""
    alice, carol, mallory = agents("alice"), agents("carol"), agents("mallory")
    mine = bus.send_message({"from": alice, "to": carol, "payload": "private"}).id
    read_all(bus, carol, 1)
    own = mcp_call(module_env, alice, "message_status", {"id": mine})
    assert not own.is_error and own.structured_content["status"] == "acked"
    theirs = mcp_call(module_env, mallory, "message_status", {"id": mine})
    assert theirs.is_error, f"{mallory} read {alice}'s status: {theirs.structured_content}"
    assert alice not in theirs.content[0].text
