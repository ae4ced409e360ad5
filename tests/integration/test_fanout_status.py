"""A message to several agents is `acked` once every one of them has acked it: one
recipient's ack used to mark it `acked` for its sender and for the others too. Real Redis
and RabbitMQ, a real worker."""

from __future__ import annotations

from tests.support.waiting import wait_for


def read_one(bus, agent, message_id):
    return wait_for(
        lambda: [m for m in bus.read(agent, limit=10) if m.id == message_id], 30, "the message"
    )


def test_a_topic_message_is_acked_once_all_its_subscribers_acked(bus, agents):
    sender, topic = agents("pub"), agents("jobs")
    readers = [agents(name) for name in ("alice", "bob", "carol")]
    for reader in readers:
        bus.subscribe(reader, [topic])
    receipt = bus.publish(sender, topic, {"n": 1})
    wait_for(lambda: bus.status(receipt.id).recipients == 3, 30, "delivery to all three")
    for n, reader in enumerate(readers[:2], start=1):
        read_one(bus, reader, receipt.id)
        assert bus.ack(reader, [receipt.id]).acked == [receipt.id]
        status = bus.status(receipt.id)
        assert status.status.value == "read" and status.acks == n, status
    assert bus.ack(readers[0], [receipt.id]).not_found == [receipt.id]  # counted once
    assert bus.status(receipt.id).acks == 2
    read_one(bus, readers[2], receipt.id)
    bus.ack(readers[2], [receipt.id])
    status = bus.status(receipt.id)
    assert status.status.value == "acked" and status.acks == 3


def test_a_broadcast_is_acked_once_every_recipient_acked(fresh_env, agents):
    fresh_env.start_worker()
    bus = fresh_env.bus()
    a, b, c = agents("a"), agents("b"), agents("c")
    for agent in (a, b, c):
        bus.read(agent, limit=1)  # registers on first use
    receipt = bus.broadcast(a, {"hello": "all"})
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
