"""Admission, the send side's one Redis call before the publish: all of it or none of it."""

from __future__ import annotations

import dataclasses

import pytest
from kombu import Queue

from bus import topology
from bus.breaker import BREAKERS
from bus.envelope import Envelope
from bus.errors import BusUnavailable, LimitExceeded, NotFound, RateLimited
from bus.topology import DELIVER_TASK, agent_queue, bus_exchange
from tests.support.env import audit_entries
from tests.support.inbox import read_all
from tests.support.waiting import holds_for, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def quiet_bus(fresh_env):
    """No worker: what is sent stays queued where a test can look at it. (A short broker
    timeout: a dead sender's dedup lease runs out in 5 s.)"""
    bus = fresh_env.bus(broker_timeout=3)
    yield bus
    bus.close()


def test_a_rate_limited_send_writes_nothing_but_its_audit_entry(fresh_env, agents):
    # One token a minute: none comes back while the test runs, however busy the machine.
    bus = fresh_env.bus(trusted_rate_limit="1/m", rate_burst=2)
    sender, reader = agents("s"), agents("r")
    for i in range(2):
        bus.send_message({"from": sender, "to": reader, "payload": i})
    with pytest.raises(RateLimited):
        bus.send_message({"id": "over-the-limit", "from": sender, "to": reader, "payload": 2})
    with pytest.raises(NotFound):
        bus.status("over-the-limit")
    assert len(bus.history(sender)) == 2
    outcomes = [(e["action"], e["outcome"]) for e in audit_entries(bus)]
    assert outcomes.count(("send", "ok")) == 2
    assert ("rate_limited", "denied") in outcomes


def test_a_batch_with_a_duplicate_names_it_and_queues_the_rest(quiet_bus, agents):
    sender, reader = agents("s"), agents("r")
    first = quiet_bus.send_message(
        {"from": sender, "to": reader, "payload": 0, "metadata": {"dedup_key": "k1"}}
    )
    receipts = quiet_bus.send_batch(
        [
            {"from": sender, "to": reader, "payload": 1, "metadata": {"dedup_key": "k1"}},
            {"from": sender, "to": reader, "payload": 2},
        ]
    )
    assert [r.status.value for r in receipts] == ["duplicate", "queued"]
    assert receipts[0].duplicate_of == first.id
    assert quiet_bus.status(receipts[1].id).status.value == "queued"
    assert len(quiet_bus.history(sender)) == 2  # the duplicate is not recorded again


def test_a_send_the_broker_refuses_is_not_left_queued(fresh_env, agents):
    # Admitted first, then the broker (an address nothing listens on) refuses it:
    # admission is undone.
    bus = fresh_env.bus(broker_url="amqp://guest:guest@127.0.0.1:1//")
    sender, reader = agents("s"), agents("r")
    with pytest.raises(BusUnavailable, match="broker"):
        bus.send_message({"from": sender, "to": reader, "payload": 1})
    assert bus.history(sender) == []
    sends = [e for e in audit_entries(bus) if e["action"] == "send"]
    assert [e["outcome"] for e in sends] == ["ok", "failed"]
    with pytest.raises(NotFound):
        bus.status(sends[0]["message_id"])
    BREAKERS["broker"].success()  # this process's breaker counted the refusal


def test_a_send_a_full_queue_refuses_is_not_left_queued(fresh_env, agents):
    # A full reject-publish queue nacks the message: its admission is undone, the message
    # before it stays queued.
    fresh_env.overrides["MESSAGE_BUS_QUEUE_MAX_LENGTH"] = "1"
    bus = fresh_env.bus()
    sender, reader = agents("s"), agents("r")
    kept = bus.send_message({"from": sender, "to": reader, "payload": 0})
    with pytest.raises(LimitExceeded, match="queue is full"):
        bus.send_message({"from": sender, "to": reader, "payload": 1})
    assert [m.id for m in bus.history(sender)] == [kept.id]
    sends = [e for e in audit_entries(bus) if e["action"] == "send"]
    assert [e["outcome"] for e in sends] == ["ok", "ok", "failed"]
    with pytest.raises(NotFound):
        bus.status(sends[2]["message_id"])
    assert bus.status(kept.id).status.value == "queued"
    bus.close()


def test_admission_never_moves_a_delivered_status_back(quiet_bus, agents):
    """A sender dies between admission and commit after its task reached a worker; the
    client's retry takes the lease over (an admission run again under that id) and must not
    move the delivered status back, nor deliver the message twice."""
    sender, reader = agents("s"), agents("r")
    message = {"from": sender, "to": reader, "payload": 1, "metadata": {"dedup_key": "d1"}}
    lost = admit_and_die(quiet_bus, message)
    quiet_bus.runtime.deliverer.deliver(Envelope.parse(lost.record.wire), attempts=1)
    retry = quiet_bus.send_message(dict(message))
    assert (retry.status.value, retry.id) == ("queued", lost.message.id)
    status = quiet_bus.status(lost.message.id)
    assert status.status.value == "delivered"
    assert set(status.timestamps) >= {"queued", "delivered"}
    assert [m.id for m in quiet_bus.read(reader)] == [lost.message.id]


def test_status_timestamps_follow_one_clock_through_the_whole_life(bus, agents):
    sender, reader = agents("s"), agents("r")
    receipt = bus.send_message({"from": sender, "to": reader, "payload": 1})
    [message] = wait_for(lambda: bus.read(reader, limit=1, wait=1), 10, "delivery")
    bus.ack(reader, [message.id])
    stamps = bus.status(receipt.id).timestamps
    assert stamps["queued"] <= stamps["delivered"] <= stamps["read"] <= stamps["acked"]


def admit_and_die(bus, message):
    """What a sender killed mid-send leaves: admitted, then nothing more (no commit)."""
    prepared = bus.sender.prepare(dict(message))
    audit = [{"action": "send", "agent": message["from"], "target": "x", "outcome": "ok"}]
    assert bus.runtime.admission.admit([prepared.record], audit).duplicates == [None]
    return prepared


def test_the_retry_of_a_send_whose_sender_died_before_publishing_goes_out(quiet_bus, agents):
    """As when an MCP server is killed mid-send: the client's retry with the same dedup
    key must reach the broker, not be told "duplicate" of a message it never got."""
    sender, reader = agents("s"), agents("r")
    message = {"from": sender, "to": reader, "payload": 1, "metadata": {"dedup_key": "job-7"}}
    lost = admit_and_die(quiet_bus, message)
    retry = quiet_bus.send_message(dict(message))
    assert (retry.status.value, retry.id) == ("queued", lost.message.id)  # under its id
    again = quiet_bus.send_message(dict(message))  # once published, the key holds
    assert again.status.value == "duplicate" and again.duplicate_of == lost.message.id


def test_a_message_published_by_a_sender_that_died_before_committing_is_delivered_once(
    fresh_env, agents
):
    fresh_env.start_worker()
    bus = fresh_env.bus(broker_timeout=3)
    sender, reader = agents("s"), agents("r")
    message = {"from": sender, "to": reader, "payload": 1, "metadata": {"dedup_key": "job-8"}}
    published = admit_and_die(bus, message)
    # It got this far, then died: the task is in the broker, the dedup record pending.
    bus.runtime.broker.publish(
        DELIVER_TASK, [published.record.wire], queue="bus.normal", task_id=published.message.id
    )
    retry = bus.send_message(dict(message))
    assert retry.id == published.message.id
    got = wait_for(lambda: bus.read(reader, limit=10, wait=1), 15, "the delivery")
    assert [m.id for m in got] == [published.message.id]
    bus.ack(reader, [m.id for m in got])
    holds_for(lambda: bus.read(reader, limit=10) == [], 1.0, "no second copy")


def test_a_channel_the_broker_closes_is_a_bus_error_naming_why(fresh_env, agents):
    # RabbitMQ answers some operations by closing the channel (here PRECONDITION_FAILED: a
    # worker agent's queue already exists with other arguments). That is a bus error naming
    # the broker's reason, never a raw amqp exception, and the process goes on publishing.
    bus = fresh_env.bus()
    queue = topology.agent_queue(bus.settings, agents("worker"))
    with bus.runtime.broker.connection() as conn:
        Queue(
            queue.name, bus_exchange, routing_key=queue.name, queue_arguments={"x-max-length": 3}
        )(conn.default_channel).declare()
    with pytest.raises(BusUnavailable, match="broker refused.*PRECONDITION_FAILED"):
        bus.runtime.broker.declare_queue(queue)
    # Positive control: the same process's next publish goes through.
    sender, reader = agents("s"), agents("r")
    receipt = bus.send_message({"from": sender, "to": reader, "payload": 1})
    assert bus.status(receipt.id).status.value == "queued"
    bus.close()


def queued_tasks(bus, queue="bus.normal"):
    with bus.runtime.broker.connection() as conn:
        return conn.default_channel.queue_declare(queue, passive=True).message_count


# MESSAGE_BUS_MAX_TASK_BYTES bounds one batch task, counted as the task's JSON has it:
# 12 messages of ~20 KiB under a 64 KiB bound go as 4 tasks (3 each); an emoji is 4 bytes of
# UTF-8 and 12 in JSON (\ud83d\ude00), so 6 messages of ~1 MB of emoji under a 4 MiB bound
# go as 6 tasks (two together would be ~6.3 MB). Every message arrives intact.
@pytest.mark.parametrize(
    ("payloads", "bound", "tasks"),
    [
        ([f"{i:02d}" + "x" * 20_000 for i in range(12)], 64 * 1024, 4),
        ([f"{i}" + "\U0001f600" * 262_000 for i in range(6)], 4 * 1024 * 1024, 6),
    ],
    ids=["ascii", "emoji"],
)
def test_a_batch_goes_as_tasks_within_the_bound_and_arrives_whole(
    fresh_env, agents, payloads, bound, tasks
):
    fresh_env.overrides["MESSAGE_BUS_MAX_TASK_BYTES"] = str(bound)
    bus = fresh_env.bus()
    sender, reader = agents("s"), agents("r")
    receipts = bus.send_batch([{"from": sender, "to": reader, "payload": p} for p in payloads])
    assert {r.status.value for r in receipts} == {"queued"}
    assert queued_tasks(bus) == tasks
    fresh_env.start_worker()
    got = read_all(bus, reader, len(payloads), timeout=60)
    assert sorted(m.payload for m in got) == payloads
    bus.close()


def test_a_batch_past_the_brokers_max_message_size_arrives_whole(fresh_env, agents):
    # With the defaults, a batch of 140 messages of ~1 MB (140 MB, past RabbitMQ's 128 MiB
    # max_message_size as one task) goes as tasks of at most 16 MiB and arrives whole.
    bus = fresh_env.bus()
    sender, reader = agents("s"), agents("r")
    payloads = [f"{i:03d}" + "x" * 1_000_000 for i in range(140)]
    receipts = bus.send_batch([{"from": sender, "to": reader, "payload": p} for p in payloads])
    assert {r.status.value for r in receipts} == {"queued"}
    assert queued_tasks(bus) > 8
    fresh_env.start_worker()
    got = read_all(bus, reader, len(payloads), timeout=60)
    assert sorted(m.payload[:3] for m in got) == [p[:3] for p in payloads]
    assert {len(m.payload) for m in got} == {1_000_003}
    bus.close()


def test_a_batch_the_broker_takes_in_part_says_which_messages_are_queued(fresh_env, agents):
    # A queue bounded at 1 task (reject-publish) takes the first of a batch's two tasks
    # and refuses the second: the error names the queued messages, the others are undone.
    fresh_env.overrides["MESSAGE_BUS_QUEUE_MAX_LENGTH"] = "1"
    fresh_env.overrides["MESSAGE_BUS_MAX_TASK_BYTES"] = str(64 * 1024)
    bus = fresh_env.bus()
    sender, reader = agents("s"), agents("r")
    batch = [
        {"from": sender, "to": reader, "payload": "x" * 40_000, "metadata": {"dedup_key": f"k{i}"}}
        for i in range(2)
    ]
    with pytest.raises(LimitExceeded, match="partly sent: 1 of the messages are queued") as refused:
        bus.send_batch(batch)
    [queued] = refused.value.fields["queued"]
    assert bus.status(queued).status.value == "queued"
    assert [m.id for m in bus.history(sender)] == [queued]
    # Its dedup key holds: a retry of the whole batch is safe (the queued one is a duplicate).
    retry = bus.send_message(dict(batch[0]))
    assert (retry.status.value, retry.duplicate_of) == ("duplicate", queued)
    bus.close()


def test_a_batch_from_several_senders_charges_each_senders_own_bucket(fresh_env, agents):
    # One token a minute, a burst of 1: a trusted batch from alice and bob costs each of
    # them one token (not two to alice); then alice has none left, carol (the control) has.
    bus = fresh_env.bus(trusted_rate_limit="1/m", rate_burst=1)
    alice, bob, carol, reader = agents("alice"), agents("bob"), agents("carol"), agents("r")
    receipts = bus.send_batch(
        [{"from": alice, "to": reader, "payload": 1}, {"from": bob, "to": reader, "payload": 2}]
    )
    assert [r.status.value for r in receipts] == ["queued", "queued"]
    with pytest.raises(RateLimited, match=alice):
        bus.send_message({"from": alice, "to": reader, "payload": 3})
    with pytest.raises(RateLimited, match=bob):
        bus.send_batch([{"from": carol, "to": reader}, {"from": bob, "to": reader}])
    assert bus.send_message({"from": carol, "to": reader}).status.value == "queued"
    bus.close()


@pytest.mark.parametrize("kind", ["bus-id", "own-id", "dedup-key"])
def test_an_admission_run_again_after_its_reply_was_lost_is_the_same_admission(
    fresh_env, agents, kind
):
    """The runner sends a call once more when its connection broke, which may be after
    Redis ran it: ADMIT run again answers as the first run did (accepted), writing nothing
    twice. It once answered "duplicate" of the message itself, and the send was never
    published (a `duplicate` receipt, the message lost). Controls: a send of its own after
    it is still admitted (the rate bucket was charged once); a real retry of the message (a
    new call) is not admitted as new."""
    bus = fresh_env.bus(trusted_rate_limit="1/m", rate_burst=2)
    sender, reader = agents("s"), agents("r")
    message = {"from": sender, "to": reader, "payload": 1}
    if kind == "own-id":
        message["id"] = f"job-{reader}"
    if kind == "dedup-key":
        message["metadata"] = {"dedup_key": "job-7"}
    prepared = bus.sender.prepare(message)
    audit = [{"action": "send", "agent": sender, "target": reader, "outcome": "ok"}]
    limits = {sender: bus.sender.guard.rate_limit_for(sender)}
    admit = bus.runtime.admission.admit
    assert admit([prepared.record], audit, limits).duplicates == [None]
    again = admit([prepared.record], audit, limits)
    assert (again.duplicates, again.unsettled, again.refusal) == ([None], [], None)
    assert len(bus.history(sender)) == 1
    sends = [e for e in audit_entries(bus) if e.get("agent") == sender]
    assert len(sends) == 1
    other = bus.send_message({"from": sender, "to": reader, "payload": 2})
    assert other.status.value == "queued"  # burst 2: one token left after a single charge
    if kind != "bus-id":
        retry = admit([bus.sender.prepare(message).record], audit, {})
        assert retry.unsettled == [0]  # waits for the first (its lease), not admitted anew
    bus.close()


def test_a_late_undo_takes_nothing_from_the_send_that_took_the_message_over(fresh_env, agents):
    """A sender delivers its message to a worker agent itself (the delivery riding behind
    its admission), then stalls past its lease; a retry takes the message over, finds it
    delivered and publishes the agent's task. When the first sender then gives up, its undo
    must leave the delivery and the status alone: they are the retry's now (taking them
    back lost the message: the agent's task found nothing in the inbox)."""
    sender, worker_agent = agents("sender"), agents("agent")
    first = fresh_env.bus(broker_timeout=1)  # a lease of 3 s
    retry = fresh_env.bus(broker_timeout=1)
    first.runtime.store.register_worker_agent(worker_agent)
    first.runtime.broker.declare_queue(agent_queue(first.settings, worker_agent))
    message = {"id": f"job-{worker_agent}", "from": sender, "to": worker_agent, "payload": 1}
    stalled = first.sender.prepare(message)
    _, delivery = first.runtime.deliverer.delivery_ahead(stalled.record.wire)
    audit = [{"action": "send", "agent": sender, "target": worker_agent, "outcome": "ok"}]
    ahead = first.runtime.store.delivery_call(delivery, stalled.record.token)
    assert first.runtime.admission.admit([stalled.record], audit, then=ahead).followed == 1

    # The retry meets the stalled sender's lease, waits for it to run out (the sender's own
    # bounded wait for a send in flight), and takes the message over.
    receipt = retry.send_message(message)
    assert (receipt.id, receipt.status.value) == (message["id"], "queued")
    assert retry.runtime.store.inbox_depth(worker_agent) == (1, 0)
    first.runtime.admission.revoke([stalled.record], {stalled.record.id})  # the late undo
    assert retry.runtime.store.inbox_depth(worker_agent) == (1, 0)
    assert retry.status(message["id"]).status.value == "delivered"
    assert len(retry.history(worker_agent)) == 1
    first.close()
    retry.close()


def test_a_batch_run_again_after_its_reply_was_lost_answers_as_its_first_run(fresh_env, agents):
    """A batch carrying one id twice: its first run admits one and names the other its
    duplicate; run again (a lost reply), it answers the same, without waiting on its own
    lease or admitting the repeat a second time."""
    bus = fresh_env.bus()
    sender, reader = agents("s"), agents("r")
    message = {"id": f"twice-{reader}", "from": sender, "to": reader, "payload": 1}
    records = [bus.sender.prepare(dict(message)).record for _ in range(2)]
    token = records[0].token
    records = [dataclasses.replace(r, token=token) for r in records]  # one call's token
    audit = [{"action": "send", "agent": sender, "target": reader, "outcome": "ok"}] * 2
    admit = bus.runtime.admission.admit
    first = admit(records, audit)
    again = admit(records, audit)
    assert first.duplicates == [None, message["id"]] and first.unsettled == []
    assert (again.duplicates, again.unsettled) == (first.duplicates, [])
    assert len(bus.history(sender)) == 1
    bus.close()


def test_a_takeover_run_again_after_its_reply_was_lost_takes_over_again(quiet_bus, agents):
    """A send that met a lease run out took it over ('retry-as'); run again (a lost reply),
    it sees its own lease and answers the same, instead of waiting for itself as for a
    send in flight."""
    sender, reader = agents("s"), agents("r")
    message = {"from": sender, "to": reader, "payload": 1, "metadata": {"dedup_key": "k"}}
    died = admit_and_die(quiet_bus, message)
    record = quiet_bus.sender.prepare(dict(message)).record  # the client's retry: a new id
    audit = [{"action": "send", "agent": sender, "target": reader, "outcome": "ok"}]
    admit = quiet_bus.runtime.admission.admit
    # While the dead sender's lease lives the retry is told "in flight" (nothing written):
    # ask until it has run out and the retry takes it over.
    lease = quiet_bus.runtime.retention.send_lease_ms / 1000
    first = wait_for(
        lambda: (a := admit([record], audit)).retry_as and a, lease + 10, "the lease to run out"
    )
    again = admit([record], audit)
    assert first.retry_as == {0: died.record.id} and first.in_flight == {}
    assert (again.retry_as, again.in_flight) == (first.retry_as, {})
