"""Sends that share a dedup key (or an id) while the first of them is still between
admission and the broker's confirm: one message is queued and delivered, every other send
is told it is that message's duplicate, and the rate limit and bounds apply to every send
that does go out, also to the retry that takes over from a sender that died mid-send."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from bus.breaker import BREAKERS
from bus.errors import BusUnavailable, NotFound, RateLimited, RequestTimeout, ValidationError
from tests.support.env import audit_entries
from tests.support.inbox import read_all
from tests.support.waiting import holds_for, wait_for

pytestmark = pytest.mark.timeout(90)

THREADS = 8


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
    bus = fresh_env.bus(broker_timeout=3, trusted_rate_limit="1/m", rate_burst=burst)
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


def test_a_batch_refused_while_settling_undoes_only_its_own(fresh_env, agents):
    # Three tokens: the first message, one spent, one for the batch's fresh message; the
    # batch's takeover then finds none. What the batch wrote is undone (and audited as
    # failed); the message it duplicates is left as it was.
    bus = fresh_env.bus(broker_timeout=3, trusted_rate_limit="1/m", rate_burst=3)
    sender, reader = agents("s"), agents("r")
    first = bus.send_message({"id": f"{reader}-x1", "from": sender, "to": reader, "payload": 1})
    bus.send_message({"from": sender, "to": reader, "payload": "spends the second token"})
    admit_only(bus, {"from": sender, "to": reader, "payload": 2, "metadata": {"dedup_key": "K"}})
    fresh = f"{reader}-fresh"
    batch = [
        {"id": first.id, "from": sender, "to": reader, "payload": 1},  # a duplicate
        {"id": fresh, "from": sender, "to": reader, "payload": 3},  # new
        {"from": sender, "to": reader, "payload": 2, "metadata": {"dedup_key": "K"}},  # a takeover
    ]
    with pytest.raises(RateLimited):
        bus.send_batch(batch)
    assert bus.status(first.id).status.value == "queued"
    with pytest.raises(NotFound):
        bus.status(fresh)
    assert [e["outcome"] for e in audit_entries(bus) if e.get("message_id") == fresh] == [
        "ok",
        "failed",
    ]
    again = bus.send_message({"id": first.id, "from": sender, "to": reader, "payload": 1})
    assert (again.status.value, again.duplicate_of) == ("duplicate", first.id)
    bus.close()


def test_an_undone_takeover_keeps_the_dead_senders_status(fresh_env, agents):
    # The retry that takes over a dead sender's key cannot reach the broker: the dead
    # sender's status stays, and the next retry takes over and goes out under its id.
    bus = fresh_env.bus(broker_timeout=3)
    cut_off = fresh_env.bus(broker_timeout=3, broker_url="amqp://guest:guest@127.0.0.1:1//")
    sender, reader = agents("s"), agents("r")
    message = {"from": sender, "to": reader, "payload": 1, "metadata": {"dedup_key": "K"}}
    lost = admit_only(bus, message)
    with pytest.raises(BusUnavailable, match="broker"):
        cut_off.send_message(dict(message))
    BREAKERS["broker"].success()  # this process's breaker counted the refusal
    assert bus.status(lost.message.id).status.value == "queued"
    retry = bus.send_message(dict(message))
    assert (retry.status.value, retry.id) == ("queued", lost.message.id)
    cut_off.close()
    bus.close()


def test_two_senders_with_one_id_in_a_trusted_batch_is_a_conflict(fresh_env, agents):
    bus = fresh_env.bus()
    alice, bob, reader = agents("alice"), agents("bob"), agents("r")
    shared = f"{reader}-shared"
    with pytest.raises(ValidationError, match="belongs to another sender"):
        bus.send_batch(
            [
                {"id": shared, "from": alice, "to": reader, "payload": "alice's"},
                {"id": shared, "from": bob, "to": reader, "payload": "bob's"},
            ]
        )
    with pytest.raises(NotFound):
        bus.status(shared)  # refused whole: nothing written
    bus.close()


def test_one_key_twice_in_a_batch_taking_over_a_dead_senders_lease(fresh_env, agents):
    bus = fresh_env.bus(broker_timeout=3)
    sender, reader = agents("s"), agents("r")
    key = {"dedup_key": "K"}
    lost = admit_only(bus, {"from": sender, "to": reader, "payload": 0, "metadata": key})
    receipts = bus.send_batch(
        [{"from": sender, "to": reader, "payload": i, "metadata": key} for i in (1, 2)]
    )
    assert [
        (r.status.value, r.id if r.duplicate_of is None else r.duplicate_of) for r in receipts
    ] == [
        ("queued", lost.message.id),
        ("duplicate", lost.message.id),
    ]
    assert bus.status(lost.message.id).status.value == "queued"
    bus.close()


def test_a_dedup_key_and_an_id_with_the_same_text_are_two_messages(fresh_env, agents):
    bus = fresh_env.bus()
    sender, reader = agents("s"), agents("r")
    by_key = bus.send_message(
        {"from": sender, "to": reader, "payload": 1, "metadata": {"dedup_key": "order-7"}}
    )
    by_id = bus.send_message({"id": "order-7", "from": sender, "to": reader, "payload": 2})
    assert (by_key.status.value, by_id.status.value) == ("queued", "queued")
    assert by_id.id == "order-7" and by_key.id != "order-7"
    bus.close()


def test_an_id_stays_its_senders_past_the_dedup_window_while_its_status_lives(fresh_env, agents):
    # Past the dedup window another agent sending under a request's id would take over its
    # status (and with it who may answer the request): refused as another sender's id.
    bus = fresh_env.bus(dedup_window=1)
    alice, bob, eve = agents("alice"), agents("bob"), agents("eve")
    request = bus.send_message({"id": f"{alice}-q", "from": alice, "to": bob, "type": "request"})
    record = bus.runtime.keys.dedup_id(request.id)
    wait_for(lambda: not bus.runtime.redis.exists(record), 10, "the dedup window to pass")
    with pytest.raises(ValidationError, match="belongs to another sender"):
        bus.send_message({"id": request.id, "from": eve, "to": alice, "payload": "spoof"})
    assert bus.status(request.id).sender == alice
    # Its own sender sending under it again is told it is that message (whose delivery is
    # idempotent per id: a second one would never arrive); a fresh id goes out (the control).
    again = bus.send_message({"id": request.id, "from": alice, "to": bob})
    assert (again.status.value, again.duplicate_of) == ("duplicate", request.id)
    assert bus.send_message({"from": alice, "to": bob}).status.value == "queued"
    bus.close()


def test_a_request_retried_with_its_dedup_key_gets_the_first_ones_answer(bus, agents):
    alice, bob = agents("alice"), agents("bob")
    asker = bus.as_agent(alice)
    ask = {"to": bob, "payload": "q", "metadata": {"dedup_key": "question-1"}}
    first = asker.start_request(dict(ask))
    assert asker.start_request(dict(ask)) == first  # the retry names the request that went out
    with pytest.raises(RequestTimeout, match=first):
        asker.request(dict(ask), timeout=0.5)
    [question] = read_all(bus, bob, 1)
    assert question.id == first
    bus.as_agent(bob).send(
        {"to": alice, "type": "response", "correlation_id": first, "payload": "a"}
    )
    answer = asker.request(dict(ask), timeout=15)  # the retry gets that request's answer
    assert (answer.correlation_id, answer.payload) == (first, "a")


def test_a_request_retried_after_its_answer_was_taken_says_so_at_once(bus, agents):
    alice, bob = agents("alice"), agents("bob")
    asker = bus.as_agent(alice)
    ask = {"to": bob, "payload": "q", "metadata": {"dedup_key": "question-2"}}
    first = asker.start_request(dict(ask))
    bus.as_agent(bob).send(
        {"to": alice, "type": "response", "correlation_id": first, "payload": "a"}
    )
    assert wait_for(lambda: asker.response_to(first), 15, "the answer").payload == "a"
    with pytest.raises(NotFound, match=f"request {first}.*answered already"):
        asker.request(dict(ask), timeout=30)
