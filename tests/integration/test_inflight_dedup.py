"""Sends that share a dedup key (or an id) while the first of them is still between
admission and the broker's confirm: one message is queued and delivered, every other send
is told it is that message's duplicate, and the rate limit and bounds apply to every send
that does go out, also to the retry that takes over from a sender that died mid-send."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from bus.errors import RateLimited
from tests.support.waiting import holds_for, wait_for

pytestmark = pytest.mark.timeout(90)

THREADS = 8


def read_all(bus, agent, count, timeout=20):
    got = []

    def enough():
        messages = bus.read(agent, limit=50, wait=0.5)
        bus.ack(agent, [m.id for m in messages])
        got.extend(messages)
        return len(got) >= count

    wait_for(enough, timeout, f"{count} message(s) for {agent}", interval=0)
    return got


def in_parallel(send, count):
    """`send(i)` from `count` threads released at once; their results in order."""
    start = threading.Barrier(count)

    def go(i):
        start.wait(10)
        return send(i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(go, range(count)))


def admit_only(bus, message):
    """A send admitted and not (yet) published: its dedup record is a live lease."""
    prepared = bus.sender.prepare(dict(message))
    audit = [{"action": "send", "agent": message["from"], "target": "x", "outcome": "ok"}]
    assert bus.runtime.admission.admit([prepared.record], audit).duplicates == [None]
    return prepared


@pytest.mark.parametrize("shared", ["dedup key", "id"])
def test_concurrent_sends_sharing_a_key_queue_one_message_and_name_it(bus, agents, shared):
    sender, reader = agents("s"), agents("r")

    def send(i):
        same = (
            {"metadata": {"dedup_key": "job-1"}} if shared == "dedup key" else {"id": f"{reader}-1"}
        )
        return bus.send_message({"from": sender, "to": reader, "payload": i, **same})

    receipts = in_parallel(send, THREADS)
    queued = [(i, r) for i, r in enumerate(receipts) if r.status.value == "queued"]
    assert len(queued) == 1, receipts
    winner, first = queued[0]
    others = [r for r in receipts if r is not first]
    assert {(r.status.value, r.duplicate_of) for r in others} == {("duplicate", first.id)}
    [got] = read_all(bus, reader, 1)
    assert (got.id, got.payload) == (first.id, winner)  # the content of the send told queued
    holds_for(lambda: bus.read(reader, limit=10) == [], 1.5, "no second message")
    assert [m.id for m in bus.history(sender)] == [first.id]


def test_concurrent_sends_with_their_own_keys_are_all_delivered(bus, agents):
    # Positive control for the test above: the same threads, keys of their own.
    sender, reader = agents("s"), agents("r")

    def send(i):
        return bus.send_message(
            {"from": sender, "to": reader, "payload": i, "metadata": {"dedup_key": f"job-{i}"}}
        )

    receipts = in_parallel(send, THREADS)
    assert {r.status.value for r in receipts} == {"queued"}
    got = read_all(bus, reader, THREADS)
    assert sorted(m.payload for m in got) == list(range(THREADS))


def test_a_send_meeting_one_in_flight_waits_for_its_confirm_and_is_its_duplicate(fresh_env, agents):
    bus = fresh_env.bus()
    sender, reader = agents("s"), agents("r")
    key = {"dedup_key": "job-2"}
    held = admit_only(bus, {"from": sender, "to": reader, "payload": "first", "metadata": key})
    outcome = []
    later = threading.Thread(
        target=lambda: outcome.append(
            bus.send_message({"from": sender, "to": reader, "payload": "later", "metadata": key})
        )
    )
    later.start()
    # Positive control: meanwhile a send with another key goes out at once.
    other = bus.send_message(
        {"from": sender, "to": reader, "payload": 3, "metadata": {"dedup_key": "x"}}
    )
    assert other.status.value == "queued"
    holds_for(lambda: later.is_alive(), 0.5, "the later send waiting for the first's confirm")
    bus.runtime.admission.commit([held.record])  # the first send's broker confirm
    later.join(10)
    [receipt] = outcome
    assert (receipt.status.value, receipt.duplicate_of) == ("duplicate", held.message.id)
    assert {m.id for m in bus.history(sender)} == {held.message.id, other.id}
    bus.close()


@pytest.mark.parametrize("burst", [1, 2])
def test_taking_over_a_dead_senders_key_is_charged_like_a_new_send(fresh_env, agents, burst):
    # The sender of `lost` died after admission (its lease runs out in broker_timeout + 2 s).
    # Its client's retry takes over under its id, and pays for it: with the one token of a
    # burst of 1 spent, it is refused; with 2 (the positive control) it goes out.
    bus = fresh_env.bus(broker_timeout=1, trusted_rate_limit="1/m", rate_burst=burst)
    sender, reader = agents("s"), agents("r")
    bus.send_message({"from": sender, "to": reader, "payload": "spends a token"})
    message = {"from": sender, "to": reader, "payload": "retried", "metadata": {"dedup_key": "j"}}
    lost = admit_only(bus, message)
    if burst == 1:
        with pytest.raises(RateLimited):
            bus.send_message(dict(message))
        assert bus.status(lost.message.id).status.value == "queued"  # still the dead send's
    else:
        retry = bus.send_message(dict(message))
        assert (retry.status.value, retry.id) == ("queued", lost.message.id)
        again = bus.send_message(dict(message))
        assert (again.status.value, again.duplicate_of) == ("duplicate", lost.message.id)
    bus.close()
