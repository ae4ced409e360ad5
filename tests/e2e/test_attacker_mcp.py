"""An attacker's view of the MCP front door: one test per hole the review found, each
through real MCP clients (stdio and HTTP, with real tokens), real workers and a real worker
agent, and each with its positive control (the rightful agent is served)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
import pytest
import redis
from mcp.client.subscriptions import SubscriptionLost

from bus.errors import BusError
from bus.store import AUDIT_MAXLEN
from bus.tokens import TokenFile
from mcp_server.server import LISTEN_STREAMS_PER_AGENT
from tests.support.env import audit_entries
from tests.support.mcp import ResourceUpdates, call, error_of, http, stdio
from tests.support.paths import REDIS_URL
from tests.support.processes import msgbus, start_echo_agent, stop
from tests.support.waiting import holds_for, wait_for
from tests.support.web import start_http_server

pytestmark = pytest.mark.timeout(180)

# `limited` may reach only the worker agent `echo`; `denier` may reach no one who exists.
ACL = """
default: allow
admins: [ops]
agents:
  limited:
    send: [echo]
  denier:
    send: [nobody]
"""
# Small bounds, so each one is reached by a handful of messages.
MAX_UNSEEN = 5
INBOX_MAX = 8
HISTORY_LIMIT = 30
HISTORY_MAX_BYTES = 64 * 1024
BOUNDS = {
    "MESSAGE_BUS_MAX_UNSEEN_RECIPIENTS": str(MAX_UNSEEN),
    "MESSAGE_BUS_INBOX_MAX": str(INBOX_MAX),
    "MESSAGE_BUS_HISTORY_LIMIT": str(HISTORY_LIMIT),
    "MESSAGE_BUS_HISTORY_MAX_BYTES": str(HISTORY_MAX_BYTES),
}
HTTP_AGENTS = ("h-alice", "h-bob", "h-mallory", "ops")


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def bounded(module_env, tmp_path_factory):
    """The module's bus with the ACL above and small bounds, and a worker that applies them."""
    acl = tmp_path_factory.mktemp("acl") / "acl.yaml"
    acl.write_text(ACL)
    module_env.overrides |= BOUNDS | {"MESSAGE_BUS_ACL_FILE": str(acl)}
    module_env.start_worker()
    return module_env


@pytest.fixture
def bus(bounded):
    client = bounded.bus()
    yield client
    client.close()


@pytest.fixture(scope="module")
def echo_agent(bounded):
    proc, _ = start_echo_agent(bounded, "agent-echo")
    yield
    stop(proc)


@pytest.fixture(scope="module")
def http_server(bounded, tmp_path_factory):
    """`msgbus mcp --http` (full profile) with a token per agent of HTTP_AGENTS."""
    path = tmp_path_factory.mktemp("tokens") / "tokens.json"
    tokens = TokenFile(path)
    issued = {name: tokens.create(name) for name in HTTP_AGENTS}
    proc, url = start_http_server(bounded, "mcp-attacker", path, MESSAGE_BUS_MCP_PROFILE="full")
    yield url, issued
    stop(proc)


async def heard_of_mail(stream, sender, to):
    """`stream`'s events, once it told of mail `sender` sent to `to` (the push works)."""
    events = stream.__aiter__()
    await call(sender, "send_message", {"to": to, "payload": "before"})
    assert getattr(await asyncio.wait_for(events.__anext__(), 10), "uri", None)
    return events


def connect(bus, *agents):
    """The agents read once: the bus knows them from then on (they may get mail)."""
    for agent in agents:
        bus.read(agent)


def inbox_depth(bus, agent):
    return bus.runtime.store.inbox_depths([agent])[agent]


# -- push: subscriptions/listen ---------------------------------------------------------------


def test_listen_on_another_agents_inbox_is_refused_and_the_owner_is_told_of_its_mail(
    http_server, bus
):
    url, tokens = http_server
    bob_inbox = "message-bus://inbox/h-bob"
    connect(bus, "h-bob")

    async def scenario():
        async with http(url, tokens["h-alice"]) as alice, http(url, tokens["h-bob"]) as bob:
            with pytest.raises(Exception, match="may subscribe only to its own inbox"):
                async with alice.listen(resource_subscriptions=[bob_inbox]):
                    pass
            # Several URIs: one foreign one refuses the whole stream.
            with pytest.raises(Exception, match="may subscribe only to its own inbox"):
                async with alice.listen(
                    resource_subscriptions=["message-bus://inbox/h-alice", bob_inbox]
                ):
                    pass
            async with bob.listen(resource_subscriptions=[bob_inbox]) as stream:
                sent = await call(alice, "send_message", {"to": "h-bob", "payload": "ping"})
                event = await asyncio.wait_for(stream.__aiter__().__anext__(), 10)
            assert getattr(event, "uri", None) == bob_inbox
            read = await call(bob, "read_messages", {"wait_seconds": 10})
            assert [m["id"] for m in read["messages"]] == [sent["id"]]
            await call(bob, "ack_messages", {"ids": [sent["id"]]})

    run(scenario())
    refusals = [
        e for e in audit_entries(bus) if e["action"] == "listen" and e["agent"] == "h-alice"
    ]
    assert refusals and refusals[0]["target"] == bob_inbox and refusals[0]["outcome"] == "denied"


def test_an_admin_taken_out_of_the_acl_stops_hearing_of_others_inboxes(bounded, bus, tmp_path):
    """An open listen stream over another agent's inbox is an admin's right, asked again
    while the stream is open: the ACL file changed, the stream ends; the same agent's
    stream over its own inbox goes on (the control)."""
    path, acl = tmp_path / "tokens.json", tmp_path / "acl.yaml"
    acl.write_text("admins: [ad-ops]\n")
    tokens = TokenFile(path)
    issued = {name: tokens.create(name) for name in ("ad-ops", "ad-other", "ad-sender")}
    connect(bus, "ad-ops", "ad-other")
    proc, url = start_http_server(bounded, "mcp-demote", path, MESSAGE_BUS_ACL_FILE=str(acl))
    other_inbox, own_inbox = "message-bus://inbox/ad-other", "message-bus://inbox/ad-ops"

    async def scenario():
        async with (
            http(url, issued["ad-sender"]) as sender,
            http(url, issued["ad-ops"]) as ops,
            http(url, issued["ad-ops"]) as ops_again,
        ):
            async with (
                ops.listen(resource_subscriptions=[other_inbox]) as stream,
                ops_again.listen(resource_subscriptions=[own_inbox]) as kept,
            ):
                events = await heard_of_mail(stream, sender, "ad-other")

                partial = acl.with_suffix(".new")
                partial.write_text("admins: []\n")
                partial.replace(acl)
                with pytest.raises(SubscriptionLost) as ended:
                    await asyncio.wait_for(events.__anext__(), 10)
                assert "its rights changed" in str(ended.value.__cause__)
                await call(sender, "send_message", {"to": "ad-ops", "payload": "after"})
                event = await asyncio.wait_for(kept.__aiter__().__anext__(), 10)
                assert getattr(event, "uri", None) == own_inbox

    try:
        run(scenario())
    finally:
        stop(proc)


@pytest.mark.filterwarnings("ignore:resources/subscribe is removed")
def test_a_revoked_token_s_open_push_streams_stop_telling_of_its_mail(bounded, bus, tmp_path):
    """Revoking a token ends its listen stream and its resources/subscribe notifications,
    not only its next requests; another agent's stream goes on (the control)."""
    path = tmp_path / "tokens.json"
    tokens = TokenFile(path)
    issued = {name: tokens.create(name) for name in ("rv-victim", "rv-keeper", "rv-sender")}
    connect(bus, "rv-victim", "rv-keeper")
    proc, url = start_http_server(bounded, "mcp-revoke", path, MESSAGE_BUS_MCP_PROFILE="full")
    victim_inbox, keeper_inbox = "message-bus://inbox/rv-victim", "message-bus://inbox/rv-keeper"

    async def scenario():
        updates = ResourceUpdates()
        async with (
            http(url, issued["rv-sender"]) as sender,
            http(url, issued["rv-victim"]) as victim,
            http(url, issued["rv-victim"], mode="legacy", message_handler=updates) as legacy,
            http(url, issued["rv-keeper"]) as keeper,
        ):
            await legacy.subscribe_resource(victim_inbox)
            async with (
                victim.listen(resource_subscriptions=[victim_inbox]) as stream,
                keeper.listen(resource_subscriptions=[keeper_inbox]) as kept,
            ):
                events = await heard_of_mail(stream, sender, "rv-victim")
                await asyncio.wait_for(updates.arrived.wait(), 10)  # both push paths work
                updates.arrived.clear()

                assert TokenFile(path).revoke(agent="rv-victim") == 1
                with pytest.raises(SubscriptionLost) as ended:  # the stream ends, saying why
                    await asyncio.wait_for(events.__anext__(), 10)
                assert "token of rv-victim was revoked" in str(ended.value.__cause__)
                await call(sender, "send_message", {"to": "rv-victim", "payload": "after"})
                await call(sender, "send_message", {"to": "rv-keeper", "payload": "after"})
                event = await asyncio.wait_for(kept.__aiter__().__anext__(), 10)
                assert getattr(event, "uri", None) == keeper_inbox
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(updates.arrived.wait(), 3)
        return updates.uris

    try:
        assert run(scenario()) == [victim_inbox]
    finally:
        stop(proc)


def test_one_agent_cannot_hold_every_listen_stream_of_the_server(http_server, bus):
    url, tokens = http_server
    alice_inbox, bob_inbox = "message-bus://inbox/h-alice", "message-bus://inbox/h-bob"
    connect(bus, "h-alice", "h-bob")

    async def scenario():
        async with contextlib.AsyncExitStack() as held:
            alice = await held.enter_async_context(http(url, tokens["h-alice"]))
            for _ in range(LISTEN_STREAMS_PER_AGENT):
                await held.enter_async_context(alice.listen(resource_subscriptions=[alice_inbox]))
            with pytest.raises(Exception, match="listen streams open, the most one agent may"):
                async with alice.listen(resource_subscriptions=[alice_inbox]):
                    pass
            # Positive control: another agent still gets a stream, and its events.
            async with http(url, tokens["h-bob"]) as bob:
                async with bob.listen(resource_subscriptions=[bob_inbox]) as stream:
                    await call(alice, "send_message", {"to": "h-bob", "payload": "ping"})
                    event = await asyncio.wait_for(stream.__aiter__().__anext__(), 10)
                assert getattr(event, "uri", None) == bob_inbox
                read = await call(bob, "read_messages", {"wait_seconds": 10})
                await call(bob, "ack_messages", {"ids": [m["id"] for m in read["messages"]]})

    run(scenario())


# -- reply_to is a send ---------------------------------------------------------------------


def test_reply_to_an_agent_the_acl_forbids_is_refused_and_the_worker_agent_relays_nothing(
    bounded, echo_agent, bus
):
    connect(bus, "carol")

    async def scenario():
        async with stdio(bounded, "limited") as limited:
            # The rightful use: limited asks echo, and the answer comes back to limited.
            answer = await call(
                limited, "request", {"to": "echo", "payload": {"q": 1}, "timeout_seconds": 30}
            )
            assert answer["status"] == "answered"
            assert answer["response"]["payload"] == {"echo": {"q": 1}, "from": "echo"}
            text = await error_of(
                limited,
                "send_message",
                {
                    "to": "echo",
                    "type": "request",
                    "payload": {"relay": "to carol"},
                    "reply_to": "carol",
                },
            )
            assert "limited may not have replies sent to carol" in text
            assert "agents.limited.send" in text

    run(scenario())
    holds_for(lambda: inbox_depth(bus, "carol") == 0, 2.0, "carol's inbox staying empty")
    assert all("to carol" not in json.dumps(m.payload) for m in bus.history("carol", limit=30))


# -- cost per message and per recipient -------------------------------------------------------

# A slow refill (one token per 10 s) and a bucket of 5: each step below is deterministic.
# (The inbox cap is raised for these clients, so a 50-message batch meets the rate limit.)
SLOW_BUCKET = {
    "MESSAGE_BUS_RATE_LIMIT": "6/m",
    "MESSAGE_BUS_RATE_BURST": "5",
    "MESSAGE_BUS_INBOX_MAX": "1000",
}


def test_a_batch_or_broadcast_costing_more_than_the_burst_is_refused_whole(bounded, bus, agents):
    spender, bob = agents("spender"), agents("bob")
    connect(bus, bob, *(agents(f"listener{i}") for i in range(6)))  # > 5 broadcast recipients

    async def scenario():
        async with stdio(bounded, spender, "full", **SLOW_BUCKET) as client:
            fifty = [{"to": bob, "payload": i} for i in range(50)]
            text = await error_of(client, "send_batch", {"messages": fifty})
            assert "reaches 50 recipients" in text and "burst 5" in text
            text = await error_of(client, "send_message", {"broadcast": True, "payload": "all"})
            assert "recipients, more than" in text and "burst 5" in text
            # The rightful size: a batch the bucket holds is delivered whole.
            five = await call(
                client, "send_batch", {"messages": [{"to": bob, "payload": i} for i in range(5)]}
            )
            assert [r["status"] for r in five["receipts"]] == ["queued"] * 5
            text = await error_of(client, "send_message", {"to": bob, "payload": "sixth"})
            assert "over its rate limit" in text and "retry after" in text
            return [r["id"] for r in five["receipts"]]

    five = run(scenario())
    got = wait_for(lambda: (lambda ms: ms if len(ms) == 5 else None)(bus.read(bob, limit=60)), 15)
    assert sorted(m.id for m in got) == sorted(five)
    holds_for(lambda: inbox_depth(bus, bob) == 5, 1.0, "nothing of the refused sends arriving")


def test_a_topic_message_is_charged_once_per_subscriber(bounded, bus, agents):
    publisher, bob, topic = agents("publisher"), agents("bob"), agents("news")
    subscribers = [agents(f"sub{i}") for i in range(3)]
    connect(bus, bob)
    for agent in subscribers:
        bus.subscribe(agent, [topic])

    async def scenario():
        async with stdio(bounded, publisher, **SLOW_BUCKET) as client:
            await call(client, "send_message", {"topic": topic, "payload": "3 tokens"})
            for i in range(2):  # 3 + 2 = the bucket of 5
                await call(client, "send_message", {"to": bob, "payload": i})
            text = await error_of(client, "send_message", {"to": bob, "payload": "one too many"})
            assert "over its rate limit" in text

    run(scenario())


# -- status -----------------------------------------------------------------------------------


def test_message_status_answers_only_the_sender_the_recipients_and_admins(http_server, bus):
    url, tokens = http_server
    connect(bus, "h-bob")

    async def scenario():
        async with (
            http(url, tokens["h-alice"]) as alice,
            http(url, tokens["h-bob"]) as bob,
            http(url, tokens["h-mallory"]) as mallory,
            http(url, tokens["ops"]) as ops,
        ):
            sent = await call(
                alice, "send_message", {"to": "h-bob", "payload": "private", "dedup_key": "job-1"}
            )
            read = await call(bob, "read_messages", {"wait_seconds": 10})
            assert [m["id"] for m in read["messages"]] == [sent["id"]]
            for client in (alice, bob, ops):
                status = await call(client, "message_status", {"id": sent["id"]})
                assert status["id"] == sent["id"] and status["status"] == "read"
            text = await error_of(mallory, "message_status", {"id": sent["id"]})
            assert f"no status for message '{sent['id']}'" in text
            assert "h-alice" not in text and "private" not in text
            # The same dedup key from another sender is that sender's own: no id leaks.
            own = await call(
                mallory, "send_message", {"to": "h-bob", "payload": "x", "dedup_key": "job-1"}
            )
            assert own["status"] == "queued" and own["id"] != sent["id"]
            assert own.get("duplicate_of") is None
            await call(bob, "ack_messages", {"ids": [sent["id"]]})
            read = await call(bob, "read_messages", {"wait_seconds": 10})
            await call(bob, "ack_messages", {"ids": [m["id"] for m in read["messages"]]})

    run(scenario())


# -- bounds: agents that never connected ------------------------------------------------------


def test_mail_for_never_seen_agents_stops_at_the_cap_and_a_declared_agent_gets_mail(
    bounded, bus, agents
):
    spammer, bob = agents("spammer"), agents("bob")
    ghosts = [agents(f"ghost{i:05d}") for i in range(MAX_UNSEEN + 3)]
    declared = agents("newcomer")
    connect(bus, bob)

    async def scenario():
        async with stdio(bounded, spammer, "full") as client:
            for ghost in ghosts[:MAX_UNSEEN]:
                await call(client, "send_message", {"to": ghost, "payload": "hello?"})
            for ghost in ghosts[MAX_UNSEEN:]:
                text = await error_of(client, "send_message", {"to": ghost, "payload": "hello?"})
                assert f"no agent '{ghost}' has connected" in text
                assert "MESSAGE_BUS_MAX_UNSEEN_RECIPIENTS" in text
            # Agents that connected still get mail; so does one an admin declared (CLI).
            await call(client, "send_message", {"to": bob, "payload": "for a real agent"})
            out = msgbus(bounded, "agents", "add", declared)
            assert out.returncode == 0 and f"declared: {declared}" in out.stdout, out.stderr
            await call(client, "send_message", {"to": declared, "payload": "welcome"})
            listed = {a["id"] for a in (await call(client, "list_agents"))["agents"]}
            resources = {str(r.uri) for r in (await client.list_resources()).resources}
            return listed, resources

    listed, resources = run(scenario())
    assert not any(ghost in listed for ghost in ghosts)
    assert not any(ghost in uri for ghost in ghosts for uri in resources)
    assert {spammer, bob, declared} <= listed
    assert wait_for(lambda: bus.read(declared), 10, "mail for the declared agent")
    assert wait_for(lambda: bus.read(bob), 10, "mail for the connected agent")


def test_a_batch_cannot_carry_mail_for_more_never_seen_agents_than_the_cap(bounded, agents):
    spammer = agents("spammer")
    ghosts = [agents(f"ghost{i:05d}") for i in range(MAX_UNSEEN + 15)]

    async def scenario():
        async with stdio(bounded, spammer, "full") as client:
            batch = [{"to": ghost, "payload": "hello?"} for ghost in ghosts]
            return await client.call_tool("send_batch", {"messages": batch})

    result = run(scenario())
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    unseen = client.scard(f"{bounded.prefix}unseen:{{{spammer}}}")
    client.close()
    assert result.is_error and "MESSAGE_BUS_MAX_UNSEEN_RECIPIENTS" in result.content[0].text, (
        f"a batch of {len(ghosts)} messages to never-seen agents was accepted; the sender now "
        f"has mail waiting for {unseen} of them (cap {MAX_UNSEEN})"
    )


# -- bounds: inboxes --------------------------------------------------------------------------


def test_a_full_inbox_refuses_more_mail_until_its_owner_reads(bounded, bus, agents):
    sender, other, bob = agents("sender"), agents("other"), agents("bob")
    connect(bus, bob)

    async def scenario():
        async with (
            stdio(bounded, sender) as client,
            stdio(bounded, other) as second,
            stdio(bounded, bob) as owner,
        ):
            # Two senders fill it: one alone may hold only its share (half, by default).
            for i in range(INBOX_MAX):
                await call(second if i % 2 else client, "send_message", {"to": bob, "payload": i})
            wait_for(lambda: inbox_depth(bus, bob) == INBOX_MAX, 15, "a full inbox")
            text = await error_of(client, "send_message", {"to": bob, "payload": "one more"})
            assert f"the inbox of {bob} holds {INBOX_MAX} messages" in text
            assert "MESSAGE_BUS_INBOX_MAX" in text
            read = await call(owner, "read_messages", {"limit": INBOX_MAX})
            await call(owner, "ack_messages", {"ids": [m["id"] for m in read["messages"]]})
            sent = await call(client, "send_message", {"to": bob, "payload": "now there is room"})
            read = await call(owner, "read_messages", {"wait_seconds": 10})
            assert [m["id"] for m in read["messages"]] == [sent["id"]]

    run(scenario())


def test_a_batch_cannot_overfill_an_inbox(bounded, bus, agents):
    sender, bob = agents("sender"), agents("bob")
    connect(bus, bob)

    async def scenario():
        async with stdio(bounded, sender, "full") as client:
            batch = [{"to": bob, "payload": i} for i in range(INBOX_MAX * 3)]
            return await client.call_tool("send_batch", {"messages": batch})

    result = run(scenario())
    if not result.is_error:
        wait_for(lambda: inbox_depth(bus, bob) >= INBOX_MAX, 15, "delivery")
    assert result.is_error and "MESSAGE_BUS_INBOX_MAX" in result.content[0].text, (
        f"a batch of {INBOX_MAX * 3} to one inbox was accepted; it holds "
        f"{inbox_depth(bus, bob)} messages (MESSAGE_BUS_INBOX_MAX={INBOX_MAX})"
    )


def test_mail_admitted_while_no_worker_runs_cannot_overfill_an_inbox(fresh_env, agents):
    cap = 3
    fresh_env.overrides["MESSAGE_BUS_INBOX_MAX"] = str(cap)
    bus = fresh_env.bus()
    sender, bob = agents("sender"), agents("bob")
    connect(bus, bob)

    async def scenario():
        async with stdio(fresh_env, sender) as client:
            accepted, refused = [], 0
            for i in range(cap * 3):
                result = await client.call_tool("send_message", {"to": bob, "payload": i})
                if result.is_error:
                    refused += 1
                else:
                    accepted.append(result.structured_content["id"])
            return accepted, refused

    accepted, refused = run(scenario())
    fresh_env.start_worker()  # what was admitted meanwhile is delivered now
    wait_for(
        lambda: all(bus.status(i).status.value in ("delivered", "dead") for i in accepted),
        30,
        "every admitted message to be delivered or dead-lettered",
    )
    depth = inbox_depth(bus, bob)
    bus.close()
    assert depth <= cap, (
        f"{len(accepted)} of {len(accepted) + refused} sends were admitted while no worker "
        f"ran (the inbox cap counts delivered mail only); the inbox now holds {depth} "
        f"messages (MESSAGE_BUS_INBOX_MAX={cap})"
    )


def test_one_broadcaster_cannot_fill_every_idle_inbox_against_everyone_else(fresh_env, agents):
    cap = 8
    fresh_env.overrides["MESSAGE_BUS_INBOX_MAX"] = str(cap)
    fresh_env.start_worker()
    bus = fresh_env.bus()
    hostile, carol, bob = agents("hostile"), agents("carol"), agents("bob")
    connect(bus, carol, bob)  # bob connected once and is away for a while

    async def scenario():
        async with stdio(fresh_env, hostile) as spammer, stdio(fresh_env, carol) as honest:
            refusal = ""
            for i in range(cap):
                sent = await spammer.call_tool("send_message", {"broadcast": True, "payload": i})
                if sent.is_error:
                    refusal = sent.content[0].text
                    break
            wait_for(lambda: inbox_depth(bus, bob) >= 1, 15, "the broadcasts in bob's inbox")
            honest_result = await honest.call_tool(
                "send_message", {"to": bob, "payload": "from carol"}
            )
            return refusal, honest_result

    refusal, result = run(scenario())
    bus.close()
    assert "its share of it" in refusal and "MESSAGE_BUS_SENDER_SHARE" in refusal, refusal
    assert not result.is_error, (
        f"after {cap} broadcasts from one agent, carol's mail to {bob} is refused: "
        f"{result.content[0].text}"
    )


# -- bounds: history --------------------------------------------------------------------------


def test_history_is_capped_in_bytes_and_keeps_the_newest(bounded, bus, agents):
    sender, bob = agents("sender"), agents("bob")
    connect(bus, bob)
    big = "x" * (16 * 1024)

    async def scenario():
        async with stdio(bounded, sender) as client, stdio(bounded, bob) as owner:
            ids = []
            for _ in range(8):  # 8 x 16 KiB: twice the 64 KiB history cap
                ids.append((await call(client, "send_message", {"to": bob, "payload": big}))["id"])
                read = await call(owner, "read_messages", {"wait_seconds": 10})
                await call(owner, "ack_messages", {"ids": [m["id"] for m in read["messages"]]})
            history = await call(owner, "get_history", {"limit": HISTORY_LIMIT})
            return ids, [m["id"] for m in history["messages"]]

    ids, kept = run(scenario())
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    for agent in (bob, sender):
        for key, bytes_key in bus.runtime.keys.histories(agent):  # received, and sent
            members = client.zrange(key, 0, -1)
            counted = int(client.get(bytes_key) or 0)
            assert counted == sum(len(m) for m in members)
            assert counted <= HISTORY_MAX_BYTES, (key, counted)
    client.close()
    assert kept[0] == ids[-1]  # newest first, and the newest is kept
    assert 2 <= len(kept) < len(ids)


def test_a_flood_from_one_sender_does_not_evict_everyone_else_from_a_history(bounded, bus, agents):
    carol, mallory, bob = agents("carol"), agents("mallory"), agents("bob")
    connect(bus, bob)

    async def drain(owner, expected):
        wait_for(lambda: inbox_depth(bus, bob) == expected, 15, f"{expected} messages")
        read = await call(owner, "read_messages", {"limit": 50})
        await call(owner, "ack_messages", {"ids": [m["id"] for m in read["messages"]]})

    async def scenario():
        async with (
            stdio(bounded, carol) as honest,
            stdio(bounded, mallory, "full") as hostile,
            stdio(bounded, bob) as owner,
        ):
            kept = []
            for i in range(3):
                sent = await call(honest, "send_message", {"to": bob, "payload": f"carol {i}"})
                kept.append(sent["id"])
            await drain(owner, 3)
            # Small messages, never more than one sender may have waiting in an inbox (its
            # share: MESSAGE_BUS_SENDER_SHARE of MESSAGE_BUS_INBOX_MAX).
            spam, chunk = 0, INBOX_MAX // 2
            while spam < HISTORY_LIMIT:
                batch = [{"to": bob, "payload": "spam"} for _ in range(chunk)]
                await call(hostile, "send_batch", {"messages": batch})
                await drain(owner, chunk)
                spam += chunk
            history = await call(owner, "get_history", {"limit": HISTORY_LIMIT})
            return kept, spam, [m["id"] for m in history["messages"]]

    kept, spam, history = run(scenario())
    left = [i for i in kept if i in history]
    assert left == kept, (
        f"{spam} small messages from one sender evicted {len(kept) - len(left)} of carol's "
        f"{len(kept)} messages from {bob}'s history (MESSAGE_BUS_HISTORY_LIMIT="
        f"{HISTORY_LIMIT}: oldest out, whoever sent them)"
    )


# -- bounds: the audit trail ----------------------------------------------------------------


def test_a_flood_of_denied_sends_is_sampled_and_the_earlier_trail_survives(bounded, bus, agents):
    bob = agents("bob")
    connect(bus, bob)
    bus.subscribe(bob, [agents("marker")])  # an entry written before the flood
    first = msgbus(bounded, "audit", "tail", "--count", "1", "--json")
    marker = json.loads(first.stdout.splitlines()[-1])
    denied = 150

    async def scenario():
        async with stdio(bounded, "denier") as client:
            for i in range(denied):
                text = await error_of(client, "send_message", {"to": bob, "payload": i})
                assert "denier may not send to" in text

    run(scenario())
    out = msgbus(bounded, "audit", "tail", "--count", "100000", "--json")
    assert out.returncode == 0, out.stderr
    entries = [json.loads(line) for line in out.stdout.splitlines()]
    assert marker["entry"] in [e["entry"] for e in entries]
    mine = [e for e in entries if e["agent"] == "denier" and e["target"] == bob]
    assert [e.get("repeats") for e in mine] == [None, "10", "100"], mine
    assert all(e["outcome"] == "denied" and "agents.denier.send" in e["rule"] for e in mine)
    holds_for(lambda: inbox_depth(bus, bob) == 0, 1.0, "no denied message arriving")


def test_subscription_churn_cannot_flush_the_audit_trail(fresh_env, agents):
    """The subscribe and unsubscribe tools are one line on the handle each (mcp_server
    tools.py); they are driven here through that handle, as the MCP server does, because
    the stream holds 100,000 entries and only a fast loop reaches that in a test."""
    bus = fresh_env.bus()  # a bus of its own: this test may flush its trail
    bus.subscribe(agents("marker"), [agents("before")])
    marker_id = bus.runtime.store.audit_entries(1, None, 0)[0][0]
    churner = bus.as_agent(agents("churner"), front_door=True)
    topics = [agents(f"t{i}") for i in range(100)]
    written = calls = refused = 0
    deadline = time.monotonic() + 60
    while written < AUDIT_MAXLEN * 1.2 and time.monotonic() < deadline:
        try:
            churner.subscribe(topics)
            churner.unsubscribe(topics)
            written += 2 * len(topics)
        except BusError:  # a refusal is what a fix would bring
            refused += 1
        calls += 2
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    still = client.xrange(bus.runtime.keys.audit, min=marker_id, max=marker_id)
    client.close()
    bus.close()
    assert still, (
        f"{calls} subscribe/unsubscribe calls by one agent wrote {written} audit entries "
        f"({refused} refused) and flushed the entry written before them from the "
        f"{AUDIT_MAXLEN}-entry trail"
    )


# -- sessions --------------------------------------------------------------------------------


def _open_session(url, token):
    """A handshake-era `initialize` (the protocol Claude Code speaks), never closed."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "hoarder", "version": "1"},
        },
    }
    headers = {
        "authorization": f"Bearer {token}",
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
    }
    return httpx.post(f"{url}/mcp", json=body, headers=headers, timeout=10)


def _end_session(url, token, session_id):
    headers = {"authorization": f"Bearer {token}", "mcp-session-id": session_id}
    return httpx.delete(f"{url}/mcp", headers=headers, timeout=10)


def test_one_agent_cannot_hold_every_session_of_the_server(bounded, tmp_path):
    path = tmp_path / "tokens.json"
    tokens = TokenFile(path)
    mallory, bob = tokens.create("s-mallory"), tokens.create("s-bob")
    proc, url = start_http_server(
        bounded, "mcp-sessions", path, MESSAGE_BUS_MCP_SESSIONS_PER_AGENT="3"
    )
    try:
        held = [_open_session(url, mallory) for _ in range(3)]
        assert [r.status_code for r in held] == [200, 200, 200]
        over = _open_session(url, mallory)
        assert over.status_code == 429
        assert "s-mallory holds 3 open MCP sessions" in over.text
        assert "MESSAGE_BUS_MCP_SESSIONS_PER_AGENT" in over.text
        # Positive controls: another agent opens sessions, and mallory again once she ends one.
        assert _open_session(url, bob).status_code == 200
        assert _end_session(url, mallory, held[0].headers["mcp-session-id"]).status_code == 200
        assert _open_session(url, mallory).status_code == 200
        assert _open_session(url, mallory).status_code == 429
    finally:
        stop(proc)


# -- what a non-admin is shown ---------------------------------------------------------------


def test_the_agents_resource_hides_other_agents_inbox_depths_from_non_admins(http_server, bus):
    url, tokens = http_server
    connect(bus, "h-alice", "h-bob", "h-mallory")

    async def depths(token):
        async with http(url, token) as client:
            resource = await client.read_resource("message-bus://agents")
        return {a["id"]: a.get("inbox_depth") for a in json.loads(resource.contents[0].text)}

    async def scenario():
        async with http(url, tokens["h-alice"]) as alice:
            for i in range(3):
                await call(alice, "send_message", {"to": "h-bob", "payload": i})
        wait_for(lambda: inbox_depth(bus, "h-bob") >= 3, 10, "bob's mail")
        seen = await depths(tokens["h-mallory"])
        assert seen["h-bob"] is None and seen["h-alice"] is None
        assert seen["h-mallory"] == 0  # its own depth it sees
        # The positive control: an admin sees every depth.
        assert (await depths(tokens["ops"]))["h-bob"] >= 3
        async with http(url, tokens["h-bob"]) as bob:
            read = await call(bob, "read_messages", {"limit": 10})
            await call(bob, "ack_messages", {"ids": [m["id"] for m in read["messages"]]})

    run(scenario())


def test_health_shows_key_fingerprints_and_worker_names_to_admins_only(http_server, bus):
    url, tokens = http_server

    async def scenario():
        async with http(url, tokens["h-mallory"]) as mallory:
            shown = await call(mallory, "health")
        assert shown["processes"] == [] and "ready" in shown
        assert all(":" not in w or "admins see them" in w for w in shown["warnings"])
        # Worker node names say which hosts and worker agents run: a count only.
        assert shown["workers"] == [] and shown["worker_count"] >= 1
        # The positive control: an admin sees the processes and the keys they sign with.
        async with http(url, tokens["ops"]) as ops:
            full = await call(ops, "health")
        assert full["processes"] and all(p["signs"] for p in full["processes"])
        assert len(full["workers"]) == full["worker_count"] >= 1

    run(scenario())


def test_a_token_revoked_during_a_long_poll_or_a_request_gets_nothing(bounded, bus, tmp_path):
    path = tmp_path / "tokens.json"
    tokens = TokenFile(path)
    eve, bob = tokens.create("r-eve"), tokens.create("r-bob")
    connect(bus, "r-eve", "r-bob", "r-alice")
    proc, url = start_http_server(bounded, "mcp-revoke", path, MESSAGE_BUS_MCP_PROFILE="full")

    async def scenario():
        async with http(url, eve) as eve_client, http(url, bob) as bob_client:
            waiting = asyncio.create_task(call(eve_client, "read_messages", {"wait_seconds": 20}))
            bob_waiting = asyncio.create_task(
                call(bob_client, "read_messages", {"wait_seconds": 20})
            )
            await asyncio.sleep(0.5)  # both are in their wait (nothing to read yet)
            TokenFile(path).revoke(agent="r-eve")
            bus.send_message({"from": "r-alice", "to": "r-eve", "payload": "after-revoke"})
            bus.send_message({"from": "r-alice", "to": "r-bob", "payload": "for-bob"})
            with pytest.raises(Exception, match="token of r-eve was revoked"):
                await asyncio.wait_for(waiting, 15)
            # The positive control: bob's wait, beside it, gets his mail.
            got = await asyncio.wait_for(bob_waiting, 15)
            assert [m["payload"] for m in got["messages"]] == ["for-bob"]
        # Nothing was leased to eve's revoked token: the message waits for her next token.
        [kept] = bus.read("r-eve", limit=10)
        assert kept.payload == "after-revoke" and kept.delivery_count == 1

    try:
        run(scenario())
    finally:
        stop(proc)
