"""A message to several agents is `acked` once every one of them has acked it: one
recipient's ack used to mark it `acked` for its sender and for the others too. Real Redis
and RabbitMQ, a real worker."""

from __future__ import annotations

import json

import pytest

from bus.errors import BusUnavailable
from bus.retention import purge_expired
from tests.support.inbox import broadcast_among
from tests.support.waiting import wait_for
from tests.support.wire import publish_dead, publish_raw, wire_for


def read_one(bus, agent, message_id):
    return wait_for(
        lambda: [m for m in bus.read(agent, limit=10) if m.id == message_id], 30, "the message"
    )


def topic_message(bus, agents, names=("alice", "bob", "carol"), *, read=True):
    """A topic message delivered to a subscriber per name (and read by each, `read`):
    (its id, the subscribers)."""
    sender, topic = agents("pub"), agents("jobs")
    readers = [agents(name) for name in names]
    for reader in readers:
        bus.subscribe(reader, [topic])
    receipt = bus.publish(sender, topic, {"n": 1})
    wait_for(lambda: bus.status(receipt.id).recipients == len(readers), 30, "delivery to all")
    for reader in readers if read else ():
        read_one(bus, reader, receipt.id)
    return receipt.id, readers


def broadcast_to_b(bus, agents):
    """A broadcast from a, with a and b connected and c not yet: (its id, a, b, c, the
    wire b's inbox holds once b has read it)."""
    receipt, (a, b) = broadcast_among(bus, agents, ("a", "b"))
    c = agents("c")
    read_one(bus, b, receipt.id)
    wire = bus.runtime.store.redis.hget(bus.runtime.keys.inbox(b).body, receipt.id)
    return receipt.id, a, b, c, wire


def test_a_topic_message_is_acked_once_all_its_subscribers_acked(bus, agents):
    message_id, readers = topic_message(bus, agents, read=False)
    for n, reader in enumerate(readers[:2], start=1):
        read_one(bus, reader, message_id)
        assert bus.ack(reader, [message_id]).acked == [message_id]
        status = bus.status(message_id)
        assert status.status.value == "read" and status.acks == n, status
    assert bus.ack(readers[0], [message_id]).not_found == [message_id]  # counted once
    assert bus.status(message_id).acks == 2
    read_one(bus, readers[2], message_id)
    bus.ack(readers[2], [message_id])
    status = bus.status(message_id)
    assert status.status.value == "acked" and status.acks == 3


def test_a_broadcast_is_acked_once_every_recipient_acked(fresh_env, agents):
    fresh_env.start_worker()
    bus = fresh_env.bus()
    receipt, (_, b, c) = broadcast_among(bus, agents)
    read_one(bus, b, receipt.id)
    bus.ack(b, [receipt.id])
    assert bus.status(receipt.id).status.value != "acked"
    read_one(bus, c, receipt.id)
    bus.ack(c, [receipt.id])
    assert bus.status(receipt.id).status.value == "acked"
    bus.close()


def test_a_direct_message_is_acked_by_its_one_recipient(bus, agents):
    """The control: one recipient, one ack."""
    sender, reader = agents("s"), agents("r")
    receipt = bus.send_message({"from": sender, "to": reader, "payload": 1})
    read_one(bus, reader, receipt.id)
    bus.ack(reader, [receipt.id])
    status = bus.status(receipt.id)
    assert status.status.value == "acked" and status.acks == 1


def test_a_delivery_run_again_that_reaches_a_new_recipient_waits_for_its_ack_too(fresh_env, agents):
    """A broadcast's task delivered again (redelivered, sent again by the outbox, replayed)
    once another agent has connected reaches that agent too: the message is not `acked`
    until it acks as well (its count of recipients once stayed as the first run left it)."""
    fresh_env.start_worker()
    bus = fresh_env.bus()
    message_id, _, b, c, wire = broadcast_to_b(bus, agents)
    receipt = bus.status(message_id)
    bus.read(c, limit=1)  # c connects
    publish_raw(fresh_env, json.loads(wire))  # the same task once more
    wait_for(lambda: bus.status(receipt.id).recipients == 2, 30, "the second run")
    bus.ack(b, [receipt.id])
    assert bus.status(receipt.id).status.value == "read"
    read_one(bus, c, receipt.id)
    bus.ack(c, [receipt.id])
    status = bus.status(receipt.id)
    assert status.status.value == "acked" and status.acks == 2
    bus.close()


def test_a_replayed_copy_of_an_acked_message_leaves_it_acked(fresh_env, agents):
    fresh_env.start_worker()
    bus = fresh_env.bus()
    sender, reader = agents("s"), agents("r")
    receipt = bus.send_message({"from": sender, "to": reader, "payload": 1})
    read_one(bus, reader, receipt.id)
    bus.ack(reader, [receipt.id])
    wire = bus.runtime.store.history(reader, 10, None)[0]
    body = json.dumps([[wire], {}, {"callbacks": None}]).encode()
    publish_dead(fresh_env, receipt.id, body, "application/json", {})
    wait_for(lambda: bus.dead_letters(), 30, "the copy")
    assert bus.replay_dead_letters([receipt.id]) == [receipt.id]
    assert bus.status(receipt.id).status.value == "acked"  # not put back to `queued`
    wait_for(lambda: not bus.stats().queue_depths.get("bus.normal"), 30, "the replay's run")
    assert bus.status(receipt.id).status.value == "acked"
    assert bus.read(reader, limit=10) == []  # delivered once
    bus.close()


def test_the_purge_of_expired_mail_leaves_what_was_acked_meanwhile_acked(fresh_env, agents):
    """The purge finds a message past its ttl, its reader acks it, then the purge takes out
    what it found: only what it took out becomes `expired`."""
    bus = fresh_env.bus()
    fresh_env.start_worker()
    sender, reader = agents("s"), agents("r")
    bus.read(reader, limit=1)
    receipt = bus.send_message(
        {"from": sender, "to": reader, "payload": 1, "metadata": {"ttl": 60}}
    )
    read_one(bus, reader, receipt.id)
    store = bus.runtime.store
    found = store.peek_inbox_items

    def found_then_acked(agent, limit):
        items = found(agent, limit)
        if agent == reader:
            bus.ack(reader, [receipt.id])  # the reader, between the purge's two steps
        return items

    store.peek_inbox_items = found_then_acked
    far = bus.runtime.clock.now_ms() + 3_600_000
    assert purge_expired(bus.runtime, now_ms=far)["inbox_expired"] == 0
    assert bus.status(receipt.id).status.value == "acked"
    bus.close()


def test_acks_counted_before_acks_were_kept_by_agent_still_count(bus, agents):
    """A message alice acked under the older count (a number, no set of who acked)."""
    message_id, (alice, bob, carol) = topic_message(bus, agents)
    bus.runtime.store.remove(alice, [message_id])  # her ack, as the older code left it
    bus.runtime.redis.hset(bus.runtime.keys.status(message_id), mapping={"acks": 1})
    bus.ack(bob, [message_id])
    assert bus.status(message_id).status.value == "read"  # the control: carol has it
    bus.ack(carol, [message_id])
    status = bus.status(message_id)
    assert status.status.value == "acked" and status.acks == 3


def test_a_lapsed_delivered_set_does_not_shrink_the_recipients(bus, agents):
    message_id, (alice, bob, carol) = topic_message(bus, agents)
    bus.runtime.redis.delete(bus.runtime.keys.delivered(message_id))  # its ttl ran out
    bus.ack(alice, [message_id])
    bus.ack(bob, [message_id])
    assert bus.status(message_id).status.value == "read"  # carol still has it


def test_a_delivery_run_again_after_all_acked_waits_for_the_new_recipient(fresh_env, agents):
    fresh_env.start_worker()
    bus = fresh_env.bus()
    message_id, _, b, c, wire = broadcast_to_b(bus, agents)
    receipt = bus.status(message_id)
    bus.ack(b, [receipt.id])
    assert bus.status(receipt.id).status.value == "acked"  # all (one) acked: the control
    bus.read(c, limit=1)
    publish_raw(fresh_env, json.loads(wire))
    wait_for(lambda: bus.status(receipt.id).recipients == 2, 30, "the second run")
    assert bus.status(receipt.id).status.value == "delivered"
    read_one(bus, c, receipt.id)
    bus.ack(c, [receipt.id])
    assert bus.status(receipt.id).status.value == "acked"
    bus.close()


def test_a_replay_whose_publish_fails_leaves_an_acked_message_acked(fresh_env, agents):
    """A copy of a delivered topic message's task is replayed; its publish fails, and
    meanwhile the last recipient acks: the status the replay saw must not be put back."""
    fresh_env.start_worker()
    bus = fresh_env.bus()
    message_id, (alice, bob) = topic_message(bus, agents, ("alice", "bob"))
    receipt = bus.status(message_id)
    bus.ack(alice, [receipt.id])
    wire = bus.runtime.store.history(alice, 10, None)[0]
    body = json.dumps([[wire], {}, {"callbacks": None}]).encode()
    publish_dead(fresh_env, receipt.id, body, "application/json", {})
    wait_for(lambda: bus.dead_letters(), 30, "the copy")

    def acked_meanwhile_then_refused(*args, **kwargs):
        bus.ack(bob, [receipt.id])
        raise BusUnavailable("the broker is away (test)")

    bus.runtime.broker.publish = acked_meanwhile_then_refused
    with pytest.raises(BusUnavailable):
        bus.replay_dead_letters([receipt.id])
    assert bus.status(receipt.id).status.value == "acked"
    bus.close()


def test_an_ack_of_ids_no_message_can_have_finds_nothing(bus, agents):
    reader = agents("r")
    odd = ["x" * 10_000, "has space", "{brace}"]
    result = bus.ack(reader, odd)
    assert result.acked == [] and result.not_found == odd


def test_a_message_with_an_id_from_before_the_rule_for_given_ids_can_be_acked(
    bus, module_env, agents
):
    """Given ids have a rule now (no spaces or braces); stored mail from before it, or from
    an older client, keeps its id and must still be acked."""
    sender, reader = agents("old"), agents("rd")
    bus.read(reader, limit=1)
    wire = wire_for(sender, reader, {"n": 1}) | {"id": f"legacy id {{{reader}}}"}
    publish_raw(module_env, bus.runtime.codec.sign(wire))
    [got] = wait_for(lambda: bus.read(reader, limit=10), 30, "the delivery")
    assert bus.ack(reader, [got.id]).acked == [got.id]
    assert bus.status(got.id).status.value == "acked"
