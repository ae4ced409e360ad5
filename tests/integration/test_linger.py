"""MESSAGE_BUS_SEND_LINGER_MS on real RabbitMQ, Redis and celery workers: concurrent single
sends share delivery tasks, and each caller still gets its own receipt or its own error."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from kombu import Connection

from bus.errors import AuthError, LimitExceeded, NotFound, RateLimited
from tests.support.env import audit_entries
from tests.support.inbox import read_all

pytestmark = pytest.mark.timeout(180)

PRODUCERS = 8
LINGER_MS = 50


def in_threads(count: int, fn: Callable[[int], Any]) -> list[Any]:
    """fn(0..count-1), each in its own thread, started together; what each returned or
    raised."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(k: int) -> None:
        barrier.wait(10)
        try:
            results[k] = fn(k)
        except Exception as exc:  # noqa: BLE001 - asserted by the test
            results[k] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a sender never returned"
    return results


def tasks_waiting(env: Any, queue: str = "bus.normal") -> int:
    with Connection(env.settings().broker_url) as conn:
        channel = conn.channel()
        try:
            return int(channel.queue_declare(queue, passive=True).message_count)
        finally:
            channel.close()


def peek_tasks(env: Any, queue: str) -> list[list[dict[str, Any]]]:
    """The messages of each task waiting in `queue`, in queue order; the tasks stay there
    (taken unacknowledged, given back when the channel closes)."""
    tasks = []
    with Connection(env.settings().broker_url) as conn:
        channel = conn.channel()
        for _ in range(10_000):
            got = channel.basic_get(queue, no_ack=False)
            if got is None:
                break
            [arg] = json.loads(got.body)[0]
            wires = arg if isinstance(arg, list) else [arg]
            tasks.append([json.loads(w) for w in wires])
        channel.close()
    return tasks


def _failed_id(bus: Any, sender: str) -> str:
    """The id of `sender`'s send that the audit trail records as failed."""
    [entry] = [
        e
        for e in audit_entries(bus)
        if e["action"] == "send" and e["agent"] == sender and e["outcome"] == "failed"
    ]
    return entry["message_id"]


def test_concurrent_senders_get_their_own_receipts_and_each_message_arrives_once_in_order(
    fresh_env, agents
):
    bus = fresh_env.bus(send_linger_ms=LINGER_MS)
    reader, per = agents("reader"), 12
    senders = [agents(f"s{k}") for k in range(PRODUCERS)]

    def produce(k: int) -> list[Any]:
        return [
            bus.send_message(
                {"from": senders[k], "to": reader, "payload": {"k": k, "i": i, "pad": "x" * k}}
            )
            for i in range(per)
        ]

    receipts = [r for batch in in_threads(PRODUCERS, produce) for r in batch]
    total = PRODUCERS * per
    assert len({r.id for r in receipts}) == total
    assert {(r.status.value, r.queue) for r in receipts} == {("queued", "bus.normal")}
    assert tasks_waiting(fresh_env) < total, "no two sends shared a task"

    fresh_env.start_worker(concurrency=1)  # tasks in queue order: the inbox keeps it
    messages = read_all(bus, reader, total, timeout=60, ack=False)
    assert sorted(m.id for m in messages) == sorted(r.id for r in receipts)
    for m in messages:
        k = m.payload["k"]
        assert m.sender == senders[k] and m.payload["pad"] == "x" * k
    for k in range(PRODUCERS):
        assert [m.payload["i"] for m in messages if m.payload["k"] == k] == list(range(per))
    assert bus.read(reader, limit=100, wait=0.5) == []
    bus.close()


def test_with_linger_off_each_single_send_is_its_own_task(fresh_env, agents):
    bus = fresh_env.bus()  # the default: off
    reader, per = agents("reader"), 5

    def produce(k: int) -> list[Any]:
        return [
            bus.send_message({"from": agents(f"s{k}"), "to": reader, "payload": i})
            for i in range(per)
        ]

    receipts = [r for batch in in_threads(PRODUCERS, produce) for r in batch]
    assert tasks_waiting(fresh_env) == PRODUCERS * per
    tasks = peek_tasks(fresh_env, "bus.normal")
    assert sorted(t[0]["id"] for t in tasks) == sorted(r.id for r in receipts)
    assert {len(t) for t in tasks} == {1}
    bus.close()


def test_a_refused_sender_gets_its_own_error_and_the_others_in_its_window_are_delivered(
    fresh_env, agents, tmp_path
):
    mallory, greedy, repeat = agents("mallory"), agents("greedy"), agents("repeat")
    good = [agents(f"good{k}") for k in range(5)]
    reader = agents("reader")
    acl = tmp_path / "acl.yaml"
    acl.write_text(
        f"default: allow\nagents:\n  {mallory}:\n    send: [nobody]\n"
        f"  {greedy}:\n    rate_limit: 1/h\n    burst: 2\n"
    )
    bus = fresh_env.bus(acl_file=acl, send_linger_ms=LINGER_MS)
    early = [bus.send_message({"from": greedy, "to": reader, "payload": i}) for i in range(2)]
    first = bus.send_message(
        {"from": repeat, "to": reader, "payload": "once", "metadata": {"dedup_key": "job-1"}}
    )
    rounds = 3

    def send(k: int) -> list[Any]:
        out = []
        for i in range(rounds):
            try:
                if k < len(good):
                    out.append(bus.send_message({"from": good[k], "to": reader, "payload": i}))
                elif k == len(good):
                    bus.send_message({"from": mallory, "to": reader, "payload": i})
                elif k == len(good) + 1:
                    bus.send_message({"from": greedy, "to": reader, "payload": 10 + i})
                else:
                    out.append(
                        bus.send_message(
                            {
                                "from": repeat,
                                "to": reader,
                                "payload": "again",
                                "metadata": {"dedup_key": "job-1"},
                            }
                        )
                    )
            except Exception as exc:  # noqa: BLE001 - each refusal is asserted below
                out.append(exc)
        return out

    results = in_threads(len(good) + 3, send)
    delivered = [r for k in range(len(good)) for r in results[k]]
    assert all(r.status.value == "queued" for r in delivered)  # the positive control
    refused_acl, refused_rate, repeated = results[len(good) :]
    assert all(isinstance(e, AuthError) and mallory in e.message for e in refused_acl)
    assert all(isinstance(e, RateLimited) and greedy in e.message for e in refused_rate)
    assert all(r.status.value == "duplicate" and r.duplicate_of == first.id for r in repeated)
    expected = {r.id for r in [*early, first, *delivered]}
    assert tasks_waiting(fresh_env) < len(expected), "no two sends shared a task"

    fresh_env.start_worker()
    messages = read_all(bus, reader, len(expected), timeout=60, ack=False)
    assert {m.id for m in messages} == expected
    assert {m.sender for m in messages} == {greedy, repeat, *good}
    assert bus.read(reader, limit=100, wait=0.5) == []
    bus.close()


def test_priorities_are_never_mixed_in_one_task(fresh_env, agents):
    bus = fresh_env.bus(send_linger_ms=LINGER_MS)
    reader, per = agents("reader"), 8
    priorities = ["critical", "high", "normal", "low"]

    def produce(k: int) -> list[Any]:
        priority = priorities[k % 4]  # four senders a priority, sending together
        return [
            bus.send_message(
                {
                    "from": agents(f"s{k}"),
                    "to": reader,
                    "payload": {"i": i, "priority": priority},
                    "metadata": {"priority": priority},
                }
            )
            for i in range(per)
        ]

    receipts = [r for batch in in_threads(16, produce) for r in batch]
    assert {r.queue for r in receipts} == {f"bus.{p}" for p in priorities}
    seen, tasks = [], 0
    for priority in priorities:
        for task in peek_tasks(fresh_env, f"bus.{priority}"):
            tasks += 1
            assert {m["metadata"]["priority"] for m in task} == {priority}, task
            seen += [m["id"] for m in task]
    assert sorted(seen) == sorted(r.id for r in receipts)
    assert tasks < len(receipts), "no two sends shared a task"

    fresh_env.start_worker()
    messages = read_all(bus, reader, len(receipts), timeout=60, ack=False)
    assert sorted(m.id for m in messages) == sorted(seen)
    assert all(m.metadata.priority.value == m.payload["priority"] for m in messages)
    bus.close()


def test_a_broker_refusal_fails_exactly_the_callers_of_that_group(fresh_env, agents):
    # A reject-publish queue of one task: the first publish fills it, the broker nacks
    # every later one; each refused caller's admission is undone, the others stay queued.
    fresh_env.overrides["MESSAGE_BUS_QUEUE_MAX_LENGTH"] = "1"
    bus = fresh_env.bus(send_linger_ms=LINGER_MS)
    reader = agents("reader")
    senders = [agents(f"s{k}") for k in range(PRODUCERS)]
    results = in_threads(
        PRODUCERS,
        lambda k: bus.send_message({"from": senders[k], "to": reader, "payload": k}),
    )
    sent = {senders[k]: r for k, r in enumerate(results) if not isinstance(r, Exception)}
    refused = [senders[k] for k, r in enumerate(results) if isinstance(r, Exception)]
    assert sent and refused
    assert all(isinstance(r, LimitExceeded) for r in results if isinstance(r, Exception))
    [task] = peek_tasks(fresh_env, "bus.normal")
    assert sorted(m["id"] for m in task) == sorted(r.id for r in sent.values())
    for sender, receipt in sent.items():
        assert bus.status(receipt.id).status.value == "queued"
        assert [m.id for m in bus.history(sender)] == [receipt.id]
    for sender in refused:
        assert bus.history(sender) == []
        with pytest.raises(NotFound):
            bus.status(_failed_id(bus, sender))
    bus.close()


def test_sends_from_an_event_loop_through_worker_threads_share_tasks(fresh_env, agents):
    # As the MCP server calls the bus: each send in a worker thread (anyio.to_thread), the
    # loop free meanwhile.
    bus = fresh_env.bus(send_linger_ms=LINGER_MS)
    reader, per = agents("reader"), 6
    handles = [bus.as_agent(agents(f"llm{k}"), front_door=True) for k in range(PRODUCERS)]

    async def main() -> list[Any]:
        async def agent(k: int) -> list[Any]:
            return [
                await anyio.to_thread.run_sync(
                    handles[k].send, {"to": reader, "payload": {"k": k, "i": i}}
                )
                for i in range(per)
            ]

        return await asyncio.gather(*(agent(k) for k in range(PRODUCERS)))

    receipts = [r for batch in asyncio.run(main()) for r in batch]
    assert len({r.id for r in receipts}) == PRODUCERS * per
    assert tasks_waiting(fresh_env) < len(receipts), "no two sends shared a task"
    fresh_env.start_worker()
    messages = read_all(bus, reader, len(receipts), timeout=60, ack=False)
    assert sorted(m.id for m in messages) == sorted(r.id for r in receipts)
    assert {m.sender for m in messages} == {h.agent for h in handles}
    bus.close()
