"""Retries, dead letters, expiry, poison messages and replay, with real workers."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from kombu import Connection, Exchange, Producer

from bus import deadletters
from bus.errors import BusUnavailable
from tests.support.waiting import holds_for, wait_for

pytestmark = pytest.mark.timeout(180)

DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1: every Redis call fails


def dead_ids(bus):
    return {d.id for d in bus.dead_letters(limit=1000)}


def test_transient_failure_retries_with_backoff_then_dead_letters_and_replays_once(
    fresh_env, agents
):
    bus = fresh_env.bus()
    sender, reader = agents("s"), agents("r")
    # A worker that cannot reach Redis: every delivery is a transient failure.
    broken = fresh_env.start_worker(MESSAGE_BUS_REDIS_URL=DEAD_REDIS)
    receipt = bus.send_message(
        {"from": sender, "to": reader, "payload": {"k": 1}, "metadata": {"max_retries": 2}}
    )
    letters = wait_for(
        lambda: [d for d in bus.dead_letters() if d.id == receipt.id],
        30,
        "the message to be dead-lettered",
    )
    letter = letters[0]
    assert letter.reason == "retries_exhausted"
    assert "Redis cannot be reached" in (letter.error or "")
    assert letter.attempts == 3  # first try + 2 retries
    assert letter.queue == "bus.normal"
    # The worker could not record the death (Redis was away for it): the listing does.
    status = bus.status(receipt.id)
    assert (status.status.value, status.reason) == ("dead", "retries_exhausted")
    log = broken.log.read_text()
    assert log.count("Retry in") >= 2
    broken.stop()

    # Listing does not consume: it is still there.
    assert receipt.id in dead_ids(bus)
    assert bus.read(reader, limit=10) == []

    fresh_env.start_worker()
    assert bus.replay_dead_letters([receipt.id]) == [receipt.id]
    got = wait_for(lambda: bus.read(reader, limit=10, wait=0.5), 15, "replayed delivery")
    assert [m.id for m in got] == [receipt.id]
    assert got[0].payload == {"k": 1}
    assert receipt.id not in dead_ids(bus)
    holds_for(lambda: bus.read(reader, limit=10) == [], 0.5, "exactly one more delivery")


def test_poison_task_goes_to_dead_letters_without_blocking_the_queue(fresh_env, agents):
    fresh_env.start_worker(concurrency=1)
    bus = fresh_env.bus()
    sender, reader = agents("s"), agents("r")
    with Connection(fresh_env.settings().broker_url) as conn:
        producer = Producer(conn)
        body = [
            ["this is not a message"],
            {},
            {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
        ]
        producer.publish(
            body,
            exchange=Exchange("bus", "direct"),
            routing_key="bus.normal",
            serializer="json",
            headers={"task": "bus.deliver", "id": "poison-1"},
        )
    receipts = [bus.send_message({"from": sender, "to": reader, "payload": i}) for i in range(20)]
    got = []
    wait_for(
        lambda: got.extend(bus.read(reader, limit=100, wait=0.3)) or len(got) >= 20,
        20,
        "the healthy messages",
    )
    assert sorted(m.payload for m in got) == list(range(20))
    assert {r.id for r in receipts} == {m.id for m in got}
    letters = wait_for(lambda: bus.dead_letters(), 10, "the poison dead letter")
    assert [d.reason for d in letters] == ["malformed"] or letters[0].reason in (
        "malformed",
        "rejected",
    )


def test_message_expiring_in_the_queue_is_dead_lettered_as_expired(fresh_env, agents):
    bus = fresh_env.bus()  # no worker is running
    sender, reader = agents("s"), agents("r")
    receipt = bus.send_message(
        {"from": sender, "to": reader, "payload": 1, "metadata": {"ttl": 0.5}}
    )
    letters = wait_for(
        lambda: [d for d in bus.dead_letters() if d.id == receipt.id], 10, "broker expiry"
    )
    assert letters[0].reason == "expired"
    assert bus.status(receipt.id).status.value == "expired"
    fresh_env.start_worker()
    holds_for(lambda: bus.read(reader, limit=10) == [], 0.5, "the expired message not delivered")


def test_message_reaching_the_worker_after_its_ttl_is_not_delivered(fresh_env, agents):
    bus = fresh_env.bus()
    fresh_env.start_worker()
    sender, reader = agents("s"), agents("r")
    codec = bus.runtime.codec
    message_id = str(uuid.uuid4())
    old = (datetime.now(UTC) - timedelta(seconds=10)).isoformat().replace("+00:00", "Z")
    wire = codec.sign(
        {
            "version": "1.0",
            "id": message_id,
            "from": sender,
            "to": reader,
            "type": "event",
            "timestamp": old,
            "payload": 1,
            "metadata": {
                "priority": "normal",
                "ttl": 5,
                "max_retries": 3,
                "retry_count": 0,
                "compression": "none",
                "encrypted": False,
            },
        }
    )
    # Published without a broker expiry, as a message that was in flight would be.
    bus.runtime.broker.publish("bus.deliver", [wire], queue="bus.normal", task_id=message_id)
    wait_for(
        lambda: bus.runtime.store.status(message_id).get("status") == "expired",
        10,
        "worker to record expiry",
    )
    assert bus.status(message_id).reason == "expired"
    letters = wait_for(
        lambda: [d for d in bus.dead_letters() if d.id == message_id],
        10,
        "the rejected message in the dead letters",
    )
    assert [d.reason for d in letters] == ["expired"]
    assert bus.read(reader, limit=10) == []


def test_purge_removes_only_the_named_dead_letters(fresh_env, agents):
    bus = fresh_env.bus()
    sender, reader = agents("s"), agents("r")
    receipts = [
        bus.send_message({"from": sender, "to": reader, "payload": i, "metadata": {"ttl": 0.2}})
        for i in range(3)
    ]
    wait_for(lambda: len(dead_ids(bus)) == 3, 10, "three dead letters")
    assert bus.purge_dead_letters([receipts[0].id]) == [receipts[0].id]
    assert dead_ids(bus) == {receipts[1].id, receipts[2].id}
    assert sorted(bus.purge_dead_letters(all=True)) == sorted(r.id for r in receipts[1:])
    assert dead_ids(bus) == set()


def test_a_listing_beside_a_replay_in_progress_sees_every_dead_letter(fresh_env, agents):
    """Reading dead letters takes them off the queue and puts them back: a listing while
    another process holds them (beat's replay, another operator) waits for it, rather than
    missing what it holds."""
    bus, other = fresh_env.bus(), fresh_env.bus()
    sender, reader = agents("s"), agents("r")
    receipts = [
        bus.send_message({"from": sender, "to": reader, "payload": i, "metadata": {"ttl": 0.2}})
        for i in range(3)
    ]
    wait_for(lambda: len(dead_ids(bus)) == 3, 10, "three dead letters")
    holding, release = threading.Event(), threading.Event()

    def hold_them() -> None:
        with other.dead_letter_queue.holding() as get:
            while get() is not None:
                pass
            holding.set()
            release.wait(30)

    listed: list[set[str]] = []
    holder = threading.Thread(target=hold_them)
    lister = threading.Thread(target=lambda: listed.append(dead_ids(bus)))
    holder.start()
    assert holding.wait(10)
    lister.start()
    holds_for(lister.is_alive, 0.5, "the listing waiting while another reader holds them")
    release.set()
    holder.join(30)
    lister.join(30)
    assert listed == [{r.id for r in receipts}]
    other.close()


def test_a_listing_beside_another_reader_says_so_rather_than_show_none(
    fresh_env, agents, monkeypatch
):
    """Another reader (a replay, beat's job) holds the dead letters off the queue: a listing
    that went ahead without the readers' lock printed [] while there were letters."""
    bus = fresh_env.bus()
    receipt = bus.send_message(
        {"from": agents("s"), "to": agents("r"), "payload": 1, "metadata": {"ttl": 0.05}}
    )
    wait_for(lambda: [d.id for d in bus.dead_letters()] == [receipt.id], 30, "the letter")
    monkeypatch.setattr(deadletters, "READERS_WAIT", 0.5)
    lock = bus.runtime.redis.lock(bus.runtime.keys.dead_letters_lock, timeout=60)
    assert lock.acquire(blocking=False)  # as another reader holds it
    try:
        with pytest.raises(BusUnavailable, match="held by another reader"):
            bus.dead_letters()
    finally:
        lock.release()
    assert [d.id for d in bus.dead_letters()] == [receipt.id]  # the control
