"""A sender that dies between admission and the broker's confirm loses nothing: the beat job
`bus.resend_unconfirmed` (bus.outbox) publishes what it admitted once its lease has passed.

Before, such a message stayed `queued` for good with no task anywhere, and a request to a
worker agent whose sender delivered it itself and died before publishing its `bus.handle`
task stayed `delivered`, never handled, never answered: nothing swept either.

The senders here are real processes killed with SIGKILL at the named step.
"""

from __future__ import annotations

import pytest
import redis

from bus.breaker import BREAKERS
from bus.errors import BusUnavailable, NotFound
from bus.outbox import resend_unconfirmed
from tests.support.killed import killed_send
from tests.support.processes import start_echo_agent, stop
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def echo_agent(module_env, worker):
    proc, log = start_echo_agent(module_env, "agent-echo-unconfirmed")
    yield log
    stop(proc)


def unconfirmed(bus):
    return bus.runtime.store.redis.zrange(bus.runtime.store.keys.unconfirmed, 0, -1)


def past_the_lease(bus):
    return bus.runtime.clock.now_ms() + bus.runtime.retention.send_lease_ms + 1000


def test_a_message_whose_sender_died_before_the_publish_is_published_by_the_sweep(
    module_env, bus, agents
):
    sender, receiver = agents("sender"), agents("receiver")
    assert bus.read(receiver, limit=1, wait=0) == []  # connected: mail for it is ordinary
    message = {"id": f"m-{sender}", "from": sender, "to": receiver, "payload": {"n": 1}}
    killed_send(module_env, "publish", message)
    assert bus.status(message["id"]).status.value == "queued"
    assert message["id"] in unconfirmed(bus)

    # Within its lease the sender may still be on its way: the sweep leaves it (control).
    assert resend_unconfirmed(bus.runtime)["resent"] == 0
    assert message["id"] in unconfirmed(bus)

    assert resend_unconfirmed(bus.runtime, now_ms=past_the_lease(bus))["resent"] == 1
    got = wait_for(lambda: bus.read(receiver, limit=10, wait=0.5), 30, "the message")
    assert [(m.id, m.payload) for m in got] == [(message["id"], {"n": 1})]
    assert bus.status(message["id"]).status.value in ("delivered", "read")
    assert unconfirmed(bus) == []
    # Once is enough: the next pass has nothing to do, and a retry is its duplicate.
    assert resend_unconfirmed(bus.runtime, now_ms=past_the_lease(bus))["resent"] == 0
    assert bus.send_message(message).status.value == "duplicate"


def test_a_request_its_sender_delivered_before_dying_is_handled_and_answered(
    module_env, bus, agents, echo_agent
):
    asker = agents("asker")
    assert bus.read(asker, limit=1, wait=0) == []
    request = {
        "id": f"r-{asker}",
        "from": asker,
        "to": "echo",
        "type": "request",
        "reply_to": asker,
        "payload": {"q": "still there?"},
    }
    killed_send(module_env, "dispatch", request)
    assert bus.status(request["id"]).status.value == "delivered"
    assert request["id"] in unconfirmed(bus)

    assert resend_unconfirmed(bus.runtime, now_ms=past_the_lease(bus))["resent"] == 1
    got = wait_for(lambda: bus.read(asker, limit=10, wait=0.5), 30, "the answer")
    assert [(m.correlation_id, m.payload["echo"]) for m in got] == [
        (request["id"], {"q": "still there?"})
    ]


def test_sends_that_went_through_leave_nothing_unconfirmed(module_env, bus, agents, echo_agent):
    """The control of the two above: what the broker confirmed is off the list at once,
    single, batched, to a worker agent and its answer alike."""
    sender, receiver = agents("sender"), agents("receiver")
    sent = [bus.send_message({"from": sender, "to": receiver, "payload": 1}).id]
    given = {"from": sender, "to": receiver, "payload": 2, "id": f"given-{sender}"}
    sent.append(bus.send_message(given).id)
    batch = bus.send_batch([{"from": sender, "to": receiver, "payload": n} for n in range(3)])
    sent += [r.id for r in batch]
    answer = bus.request({"from": sender, "to": "echo", "payload": {"q": 1}}, timeout=30)
    sent.append(answer.correlation_id)
    assert set(sent) & set(unconfirmed(bus)) == set()
    # The worker agent's answer is delivered in its admission's round trip, before its
    # confirm: the asker may hold it a moment before the agent's process takes it off.
    wait_for(lambda: answer.id not in unconfirmed(bus), 10, "the answer's confirm")


def test_a_send_the_broker_refused_leaves_nothing_to_publish_later(module_env, agents):
    bus = module_env.bus()
    sender, receiver = agents("sender"), agents("receiver")

    def refused(*args, **kwargs):
        raise BusUnavailable("the broker is away (test)")

    bus.runtime.broker.publish = refused
    with pytest.raises(BusUnavailable):
        bus.send_message({"id": f"x-{sender}", "from": sender, "to": receiver, "payload": 0})
    with pytest.raises(NotFound):
        bus.status(f"x-{sender}")
    assert unconfirmed(bus) == []


def test_an_unconfirmed_message_past_its_ttl_is_marked_expired_not_sent(module_env, bus, agents):
    sender, receiver = agents("sender"), agents("receiver")
    assert bus.read(receiver, limit=1, wait=0) == []
    message = {"id": f"t-{sender}", "from": sender, "to": receiver, "payload": 0}
    killed_send(module_env, "publish", message | {"metadata": {"ttl": 5}})
    later = past_the_lease(bus) + 5000
    assert resend_unconfirmed(bus.runtime, now_ms=later) == {
        "resent": 0,
        "settled": 0,
        "expired": 1,
    }
    status = bus.status(message["id"])
    assert (status.status.value, status.reason) == ("expired", "expired")
    assert unconfirmed(bus) == []


def test_a_sender_that_outlived_its_lease_cannot_undo_what_the_sweep_published(
    module_env, bus, agents
):
    """Its publish stalled past the lease (a hung broker node: 19.7 s against a 12 s lease),
    the sweep published the message meanwhile, then the publish failed. The sender's undo
    used to delete the status and dedup records of a delivered message, and say it failed:
    its retry was delivered a second time. Now the sweep's claim fences the undo off and
    the sender says `queued`."""
    sender, receiver = agents("sender"), agents("receiver")
    assert bus.read(receiver, limit=1, wait=0) == []
    slow, sweeper = module_env.bus(), module_env.bus()

    def stalls_past_the_lease_then_fails(*args, **kwargs):
        assert resend_unconfirmed(sweeper.runtime, now_ms=past_the_lease(sweeper))["resent"] == 1
        raise BusUnavailable("the broker stopped answering (test)")

    slow.runtime.broker.publish = stalls_past_the_lease_then_fails
    message = {"id": f"slow-{sender}", "from": sender, "to": receiver, "payload": {"n": 1}}
    assert slow.send_message(message).status.value == "queued"
    got = wait_for(lambda: bus.read(receiver, limit=10, wait=0.5), 30, "the message")
    assert [(m.id, m.payload) for m in got] == [(message["id"], {"n": 1})]
    assert bus.status(message["id"]).status.value in ("delivered", "read")
    assert [m.id for m in bus.history(sender)] == [message["id"]]
    assert bus.send_message(message).status.value == "duplicate"
    slow.close()
    sweeper.close()


def test_the_sweep_leaves_a_worker_agents_message_whose_handler_has_started(
    module_env, bus, agents
):
    """Its sender died after publishing the handler's task, before its confirm was
    recorded: the handler may be running. Sent again, it ran a second time beside it."""
    asker, agent = agents("asker"), agents("worker-agent")
    bus.runtime.store.register_worker_agent(agent)  # served by nobody here: its tasks wait
    assert bus.read(asker, limit=1, wait=0) == []
    started, waiting = (
        {"id": f"{name}-{asker}", "from": asker, "to": agent, "type": "request", "payload": 0}
        for name in ("started", "waiting")
    )
    killed_send(module_env, "commit", started)
    killed_send(module_env, "commit", waiting)
    assert bus.runtime.handler_runs.start(agent, started["id"]) == 1  # its handler began
    assert resend_unconfirmed(bus.runtime, now_ms=past_the_lease(bus)) == {
        "resent": 1,  # the other one (the control): its task may never have been published
        "settled": 1,
        "expired": 0,
    }
    assert unconfirmed(bus) == []


def test_an_unconfirmed_message_whose_text_was_lost_ends_dead_with_why(module_env, bus, agents):
    sender, receiver = agents("sender"), agents("receiver")
    message = {"id": f"lost-{sender}", "from": sender, "to": receiver, "payload": 0}
    killed_send(module_env, "publish", message)
    bus.runtime.store.redis.hdel(bus.runtime.store.keys.unconfirmed_wires, message["id"])
    assert resend_unconfirmed(bus.runtime, now_ms=past_the_lease(bus))["settled"] == 1
    status = bus.status(message["id"])
    assert (status.status.value, status.reason) == ("dead", "malformed")


@pytest.mark.parametrize("ran", [True, False], ids=["reply-lost", "never-reached"])
def test_an_llm_agent_is_told_nothing_was_sent_only_when_so(module_env, worker, agents, ran):
    """Redis ran the admission, then the connection dropped before its reply, and the
    runner's retry could not connect: the send may be recorded (bus.outbox then delivers
    it), so "nothing was sent, try again" would make the retry a duplicate. The control:
    Redis never reached, nothing was sent."""
    bus = module_env.bus()
    sender, receiver = agents("llm"), agents("receiver")
    assert bus.read(receiver, limit=1, wait=0) == []
    backend = bus.runtime.scripts.backend
    send = backend.send
    calls = {"n": 0}

    def flaky(packed, count):
        calls["n"] += 1
        if calls["n"] == 1:
            if ran:
                send(packed, count)
                raise redis.ConnectionError("Connection reset by peer (test)")
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379 (test)")
        if calls["n"] == 2:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379 (test)")
        return send(packed, count)

    backend.send = flaky
    try:
        with pytest.raises(BusUnavailable) as told:
            bus.as_agent(sender, front_door=True).send({"to": receiver, "payload": 1})
    finally:
        backend.send = send
        BREAKERS["redis"].success()
    if ran:
        [message_id] = told.value.fields["ids"]
        assert f"may have recorded as {message_id}" in told.value.message
        assert bus.status(message_id).status.value == "queued"
        # as it said: the sweep delivers it
        assert resend_unconfirmed(bus.runtime, now_ms=past_the_lease(bus))["resent"] == 1
        got = wait_for(lambda: bus.read(receiver, limit=10, wait=0.5), 30, "the message")
        assert [m.id for m in got] == [message_id]
    else:
        assert told.value.message.endswith("nothing was sent, try again")
        assert bus.history(sender) == []
    bus.close()


def test_a_send_whose_confirm_never_came_is_never_delivered_and_its_retry_is_the_one_copy(
    fresh_env, agents
):
    """The broker took the task but its confirm never came (a timeout): the sender was told
    "not sent" and its records taken back, yet a worker delivered it later, with no status,
    and the retry with the same dedup key was delivered a second time."""
    bus = fresh_env.bus()
    sender, receiver = agents("sender"), agents("receiver")
    message = {"from": sender, "to": receiver, "payload": "once", "metadata": {"dedup_key": "j"}}
    publish = bus.runtime.broker.publish

    def taken_unconfirmed(*args, **kwargs):
        publish(*args, **kwargs)  # the broker has it ...
        raise BusUnavailable("bus unavailable: the broker cannot be reached (timed out)")

    bus.runtime.broker.publish = taken_unconfirmed
    with pytest.raises(BusUnavailable):
        bus.send_message(message)
    bus.runtime.broker.publish = publish
    retry = bus.send_message(message)
    assert retry.status.value == "queued"  # the control: a retry is a new send, not a duplicate
    fresh_env.start_worker(concurrency=1)  # in queue order: the first task goes first
    got = wait_for(lambda: bus.read(receiver, limit=10, wait=0.5), 30, "the retry")
    assert [(m.id, m.payload) for m in got] == [(retry.id, "once")]
    control = bus.send_message({"from": sender, "to": receiver, "payload": "after"})
    got = wait_for(lambda: bus.read(receiver, limit=10, wait=0.5), 30, "the next message")
    assert [m.id for m in got] == [control.id]  # nothing else came in between
    assert sorted(m.id for m in bus.history(sender)) == sorted([retry.id, control.id])


def test_a_send_a_worker_delivered_before_its_confirm_failed_is_sent(fresh_env, agents):
    """The other order: the worker delivered it while the confirm was still awaited. Its
    undo must not take the status, the dedup record and the history from a delivered
    message: the send says `queued`, and a retry is its duplicate."""
    fresh_env.start_worker()
    bus = fresh_env.bus()
    sender, receiver = agents("sender"), agents("receiver")
    message = {"from": sender, "to": receiver, "payload": "once", "metadata": {"dedup_key": "j"}}
    publish = bus.runtime.broker.publish
    seen = []

    def delivered_then_unconfirmed(*args, **kwargs):
        publish(*args, **kwargs)
        seen.append(wait_for(lambda: bus.read(receiver, limit=10, wait=0.5), 30, "delivery"))
        raise BusUnavailable("bus unavailable: the broker cannot be reached (timed out)")

    bus.runtime.broker.publish = delivered_then_unconfirmed
    receipt = bus.send_message(message)
    bus.runtime.broker.publish = publish
    assert [m.id for m in seen[0]] == [receipt.id]
    assert bus.status(receipt.id).status.value == "read"
    assert bus.send_message(message).status.value == "duplicate"
    assert [m.id for m in bus.history(sender)] == [receipt.id]


def test_a_refused_send_leaves_its_senders_history_as_it_was(fresh_env, agents):
    """The admission made room in a full history before the publish: a send the broker
    refused took the older entries with it, a refused batch of 10 the whole history."""
    fresh_env.overrides["MESSAGE_BUS_HISTORY_LIMIT"] = "3"
    bus = fresh_env.bus()
    sender, receiver = agents("sender"), agents("receiver")
    sent = [bus.send_message({"from": sender, "to": receiver, "payload": i}).id for i in range(3)]
    publish = bus.runtime.broker.publish

    def refused(*args, **kwargs):
        raise BusUnavailable("the broker is away (test)")

    bus.runtime.broker.publish = refused
    with pytest.raises(BusUnavailable):
        bus.send_message({"from": sender, "to": receiver, "payload": "refused"})
    with pytest.raises(BusUnavailable):
        bus.send_batch([{"from": sender, "to": receiver, "payload": n} for n in range(10)])
    assert sorted(m.id for m in bus.history(sender, limit=3)) == sorted(sent)
    bus.runtime.broker.publish = publish
    last = bus.send_message({"from": sender, "to": receiver, "payload": "sent"}).id
    assert sorted(m.id for m in bus.history(sender, limit=3)) == sorted([*sent[1:], last])
    assert bus.runtime.redis.zcard(bus.runtime.keys.history(sender, sent=True)) == 3  # bounded
