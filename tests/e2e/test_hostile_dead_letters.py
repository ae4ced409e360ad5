"""Hostile content in the dead letters: tag-shaped messages dead-lettered for a transient
cause are listed as they were sent (Python API, CLI, MCP), replayed by hand, by the CLI and
by beat's job, and delivered equal; poison put straight into the queue (bodies that are no
task, arguments that are no message, a pickle) is listed as `malformed` and never stops the
listing, the replay or the purge of the good entries behind it."""

from __future__ import annotations

import asyncio
import json
import pickle
import threading
import time
import uuid
from typing import Any

import pytest
from kombu import Connection, Exchange, Producer
from mcp.client import Client

from bus.topology import agent_queue
from mcp_server.identity import Identity
from mcp_server.server import build_server
from tests.support.hostile import DELIVERABLE_BY_NAME, TAGS, describe, exactly_equal
from tests.support.paths import ARTIFACTS
from tests.support.processes import msgbus, spawn, stop
from tests.support.waiting import wait_for
from tests.support.wire import publish_dead

pytestmark = pytest.mark.timeout(300)


UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"
DEAD_PAYLOADS = TAGS + [
    (name, DELIVERABLE_BY_NAME[name])
    for name in ("uint64 max", "negative zero", "NUL", "64 nested mixed", "envelope-named keys")
]


def dead_letter_all(env: Any, bus: Any, sender: str, reader: str, payloads: list[Any]) -> list[str]:
    """Sends `payloads` with max_retries 0 past a worker that cannot reach Redis: each one
    is dead-lettered (retries exhausted) on its first try. The broken worker is stopped."""
    broken = env.start_worker(MESSAGE_BUS_REDIS_URL=UNREACHABLE_REDIS)
    ids = [
        bus.send_message(
            {
                "from": sender,
                "to": reader,
                "type": "command",
                "payload": p,
                "metadata": {"max_retries": 0},
            }
        ).id
        for p in payloads
    ]
    wait_for(
        lambda: set(ids) <= {d.id for d in bus.dead_letters(limit=1000)},
        60,
        f"{len(ids)} dead letters",
        interval=0.2,
    )
    broken.stop()
    return ids


def read_until(bus: Any, reader: str, ids: set[str], timeout: float = 60) -> dict[str, Any]:
    got: dict[str, Any] = {}

    def arrived() -> bool:
        messages = bus.read(reader, limit=100, wait=1)
        bus.ack(reader, [m.id for m in messages])
        got.update((m.id, m.payload) for m in messages)
        return ids <= got.keys()

    wait_for(arrived, timeout, f"{len(ids)} messages for {reader}", interval=0)
    return got


def unequal(sent: dict[str, Any], got: dict[str, Any]) -> list[str]:
    return [
        f"{i}: sent {describe(p)}, got {describe(got.get(i))}"
        for i, p in sent.items()
        if not exactly_equal(p, got.get(i))
    ]


def list_over_mcp(env: Any) -> list[dict[str, Any]]:
    """list_dead_letters through the real MCP client (in-memory transport), as an admin."""
    server, _ = build_server(env.settings(admins=["dlq-ops"]), Identity.stdio("dlq-ops"), "full")

    async def listed() -> Any:
        async with Client(server) as client:
            return await client.call_tool("list_dead_letters", {"limit": 1000})

    try:
        result = asyncio.run(listed())
    finally:
        server.bus.close()
    assert not result.is_error, result.content[0].text
    return result.structured_content["dead_letters"]


def test_tag_shaped_dead_letters_are_listed_replayed_by_hand_and_by_beat_and_arrive_equal(
    fresh_env, agents
):
    bus, sender, reader = fresh_env.bus(), agents("s"), agents("r")
    payloads = [p for _, p in DEAD_PAYLOADS]
    ids = dead_letter_all(fresh_env, bus, sender, reader, payloads)
    sent = dict(zip(ids, payloads, strict=True))

    letters = {d.id: d for d in bus.dead_letters(limit=1000)}
    assert {letters[i].reason for i in ids} == {"retries_exhausted"}
    assert unequal(sent, {i: letters[i].message["payload"] for i in ids}) == []
    cli = msgbus(fresh_env, "dlq", "list", "--json")
    assert cli.returncode == 0, cli.stderr
    assert unequal(sent, {d["id"]: d["message"]["payload"] for d in json.loads(cli.stdout)}) == []
    shown = msgbus(fresh_env, "dlq", "show", ids[0], "--json")
    assert shown.returncode == 0, shown.stderr
    assert exactly_equal(sent[ids[0]], json.loads(shown.stdout)["message"]["payload"])
    over_mcp = {d["id"]: d["message"]["payload"] for d in list_over_mcp(fresh_env)}
    assert unequal(sent, over_mcp) == []

    fresh_env.start_worker()
    by_hand, by_beat = ids[: len(ids) // 2], ids[len(ids) // 2 :]
    assert sorted(bus.replay_dead_letters(by_hand)) == sorted(by_hand)
    got = read_until(bus, reader, set(by_hand))
    assert unequal({i: sent[i] for i in by_hand}, got) == []
    assert {d.id for d in bus.dead_letters()} == set(by_beat)

    beat, log = spawn(
        fresh_env, "beat-hostile", ["-m", "msgbus", "beat"], MESSAGE_BUS_REPLAY_INTERVAL="1"
    )
    try:
        got = read_until(bus, reader, set(by_beat), timeout=90)
    finally:
        stop(beat)
    assert unequal({i: sent[i] for i in by_beat}, got) == []
    assert bus.dead_letters() == []
    statuses = {i: bus.status(i).status.value for i in ids}
    assert {i: s for i, s in statuses.items() if s != "acked"} == {}, f"by beat: {by_beat}"


PICKLE_CANARY = ARTIFACTS / "hostile-pickle-canary"


class _Canary:
    """Unpickling this creates PICKLE_CANARY: the dead letters must never unpickle."""

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(PICKLE_CANARY), "w"))


def poison_entries() -> list[tuple[str, bytes, str | None, dict[str, Any]]]:
    """(task id, body, content type, extra headers) of broker messages that are no bus
    message, each in its own way."""

    def task(args: Any, task_name: str = "bus.deliver") -> bytes:
        return json.dumps([args, {}, {"callbacks": None}]).encode()

    deep = b"[" * 100_000 + b"]" * 100_000
    return [
        ("poison-pickle", pickle.dumps(_Canary()), "application/x-python-serialize", {}),
        ("poison-binary", b"\xff\xfe\x00not json{", "application/json", {}),
        ("poison-deep-json", deep, "application/json", {}),
        ("poison-tag-body", b'{"__type__": "bytes", "__value__": "AA=="}', "application/json", {}),
        ("poison-empty", b"", None, {}),
        ("poison-text-arg", task(["not a message"]), "application/json", {}),
        (
            "poison-tag-arg",
            task(['{"__type__": "datetime", "__value__": "x"}']),
            "application/json",
            {},
        ),
        ("poison-object-arg", task([{"id": 5, "from": None}]), "application/json", {}),
        ("poison-no-args", task([]), "application/json", {}),
        ("poison-huge-arg", task(["x" * 2_000_000]), "application/json", {}),
        (
            "poison-batch",
            task([["junk", '{"id": "y"}']]),
            "application/json",
            {"task": "bus.deliver_batch"},
        ),
        ("poison-handle", task(["echo", "junk"]), "application/json", {"task": "bus.handle"}),
        (
            "poison-headers",
            task(["junk"]),
            "application/json",
            {"x-death": "not a list", "retries": "NaN", "x-bus-replays": {"a": 1}},
        ),
    ]


def send_beat_job(env: Any, task: str) -> None:
    """Publishes the task beat would send for a scheduled job (on bus.low, as scheduled)."""
    with Connection(env.settings().broker_url) as conn:
        Producer(conn).publish(
            [[], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}],
            exchange=Exchange("bus", "direct"),
            routing_key="bus.low",
            serializer="json",
            headers={"task": task, "id": str(uuid.uuid4())},
        )


def test_poison_in_the_dead_letters_never_stops_listing_replay_or_purge_of_the_good_behind_it(
    fresh_env, agents
):
    bus, sender, reader = fresh_env.bus(), agents("s"), agents("r")
    assert bus.dead_letters() == []  # declares the topology
    PICKLE_CANARY.unlink(missing_ok=True)
    poison = poison_entries()
    for task_id, body, content_type, headers in poison:
        publish_dead(fresh_env, task_id, body, content_type, headers)
    payloads = [p for _, p in TAGS[:6]]
    ids = dead_letter_all(fresh_env, bus, sender, reader, payloads)  # behind the poison
    sent = dict(zip(ids, payloads, strict=True))
    poison_ids = {task_id for task_id, *_ in poison} - {"poison-batch"}
    poison_ids |= {"poison-batch[0]", "poison-batch[1]"}

    letters = {d.id: d for d in bus.dead_letters(limit=1000)}
    assert set(letters) == set(ids) | poison_ids
    assert {letters[i].reason for i in poison_ids} == {"malformed"}
    assert all(letters[i].error for i in poison_ids), {i: letters[i].error for i in poison_ids}
    assert unequal(sent, {i: letters[i].message["payload"] for i in ids}) == []
    assert not PICKLE_CANARY.exists(), "a dead letter was unpickled"
    for args in (["dlq", "list", "--json"], ["dlq", "list"]):
        out = msgbus(fresh_env, *args)
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    listed = json.loads(msgbus(fresh_env, "dlq", "list", "--json").stdout)
    assert {d["id"] for d in listed} == set(ids) | poison_ids
    assert {d["id"] for d in list_over_mcp(fresh_env)} == set(ids) | poison_ids

    fresh_env.start_worker()
    first, by_cli, by_job = ids[:2], ids[2:4], ids[4:]
    assert sorted(bus.replay_dead_letters(first)) == sorted(first)
    out = msgbus(fresh_env, "dlq", "replay", *by_cli, "--json")
    assert out.returncode == 0, out.stderr
    assert sorted(json.loads(out.stdout)["replayed"]) == sorted(by_cli)
    send_beat_job(fresh_env, "bus.replay_dead_letters")
    got = read_until(bus, reader, {*first, *by_cli, *by_job}, timeout=90)
    assert unequal(sent, got) == []
    assert {d.id for d in bus.dead_letters(limit=1000)} == poison_ids

    nothing = msgbus(fresh_env, "dlq", "replay", "--all", "--json")
    assert nothing.returncode == 0 and json.loads(nothing.stdout) == {"replayed": []}, nothing
    named = sorted(poison_ids - {"poison-pickle"})
    purged = msgbus(fresh_env, "dlq", "purge", *named, "--json")
    assert purged.returncode == 0, purged.stderr
    assert sorted(json.loads(purged.stdout)["purged"]) == named
    assert [d.id for d in bus.dead_letters()] == ["poison-pickle"]
    assert bus.purge_dead_letters(all=True) == ["poison-pickle"]
    assert bus.dead_letters() == [] and not PICKLE_CANARY.exists()


def test_a_dead_letter_holding_a_lone_surrogate_does_not_break_any_listing(fresh_env, agents):
    """A task argument that is a JSON string with a lone surrogate escape becomes, once the
    body is parsed, a Python string no UTF-8 encoder takes: listings must still work."""
    bus, sender, reader = fresh_env.bus(), agents("s"), agents("r")
    assert bus.dead_letters() == []
    body = b'[["\\ud800 not a message"], {}, {}]'
    publish_dead(fresh_env, "poison-surrogate", body, "application/json", {})
    [good] = dead_letter_all(fresh_env, bus, sender, reader, [TAGS[0][1]])
    assert {d.id for d in bus.dead_letters()} == {"poison-surrogate", good}
    for args in (["dlq", "list", "--json"], ["dlq", "list"], ["dlq", "show", "poison-surrogate"]):
        out = msgbus(fresh_env, *args)
        assert out.returncode == 0 and "Traceback" not in out.stderr, (args, out.stderr[-1500:])
    assert {d["id"] for d in list_over_mcp(fresh_env)} == {"poison-surrogate", good}
    assert sorted(bus.purge_dead_letters(all=True)) == sorted(["poison-surrogate", good])


def test_a_replayed_message_read_and_acked_at_once_stays_acked(fresh_env, agents):
    """The replay records `queued` for what it republished; a worker can deliver it, and a
    reader read and ack it, before that record is written: it must not undo them."""
    bus, sender, reader = fresh_env.bus(), agents("s"), agents("r")
    ids = dead_letter_all(fresh_env, bus, sender, reader, list(range(100)))
    fresh_env.start_worker()
    got: set[str] = set()
    stop = threading.Event()

    def read_fast() -> None:
        other = fresh_env.bus()
        deadline = time.monotonic() + 90
        while not stop.is_set() and time.monotonic() < deadline:
            messages = other.read(reader, limit=100, wait=0.2)
            if messages:
                other.ack(reader, [m.id for m in messages])
                got.update(m.id for m in messages)
        other.close()

    thread = threading.Thread(target=read_fast, daemon=True)
    thread.start()
    try:
        assert len(bus.replay_dead_letters(all=True)) == len(ids)
        wait_for(lambda: set(ids) <= got, 60, "the replayed messages read and acked")
    finally:
        stop.set()
        thread.join(30)
    statuses = {i: bus.status(i).status.value for i in ids}
    assert {i: s for i, s in statuses.items() if s != "acked"} == {}


def test_purging_a_forged_dead_letter_takes_nothing_from_a_worker_agents_inbox(fresh_env, agents):
    """A purged worker-agent dead letter leaves that agent's inbox; one forged on the broker
    (anyone there can publish to the dead letters) naming the id of another's message in
    it must take nothing out: only the very message the dead letter holds goes."""
    bus, sender, worker_agent = fresh_env.bus(), agents("s"), agents("agent")
    bus.runtime.store.register_worker_agent(worker_agent)
    bus.runtime.broker.declare_queue(agent_queue(bus.settings, worker_agent))
    genuine = bus.send_message({"from": sender, "to": worker_agent, "payload": "mine"})
    assert bus.runtime.store.inbox_depth(worker_agent) == (1, 0)
    [stored] = bus.runtime.store.peek_inbox(worker_agent, 1)
    forged = json.dumps(json.loads(stored) | {"from": agents("mallory"), "payload": "x"})
    body = json.dumps([[worker_agent, forged], {}, {"callbacks": None}]).encode()
    publish_dead(
        fresh_env, f"{genuine.id}:{worker_agent}", body, "application/json", {"task": "bus.handle"}
    )
    wait_for(lambda: any(d.id == genuine.id for d in bus.dead_letters()), 30, "the forgery")
    assert bus.purge_dead_letters([genuine.id]) == [genuine.id]
    assert bus.runtime.store.inbox_depth(worker_agent) == (1, 0)
    [kept] = bus.read(worker_agent)
    assert (kept.id, kept.payload, kept.sender) == (genuine.id, "mine", sender)
    bus.close()
