"""A worker agent's message that died is buried: out of its inbox (its place and its
sender's share given back), a marker kept, and put back by a replay under the inbox's cap
and share; a forged or leftover copy puts nothing back. Real Redis and RabbitMQ; the
messages reach the worker agent's inbox in their sender's admission (no agent process)."""

from __future__ import annotations

import json

import pytest

from bus.envelope import Envelope
from bus.errors import InboxFull
from bus.topology import agent_queue


@pytest.fixture
def inbox(fresh_env, agents):
    """A worker agent's inbox of 4 (2 per sender) on a bus of its own: (bus, agent)."""
    fresh_env.overrides["MESSAGE_BUS_INBOX_MAX"] = "4"
    bus = fresh_env.bus()
    agent = agents("agent")
    bus.runtime.store.register_worker_agent(agent)
    bus.runtime.broker.declare_queue(agent_queue(bus.settings, agent))
    yield bus, agent
    bus.close()


def sent(bus, sender, agent, payload):
    """(id, the wire its inbox holds) of a message from `sender` in `agent`'s inbox."""
    receipt = bus.send_message({"from": sender, "to": agent, "payload": payload})
    return receipt.id, bus.runtime.store.redis.hget(
        bus.runtime.store.keys.inbox(agent).body, receipt.id
    )


def at_try(bus, wire, tries):
    """The wire as its dead letter holds it after `tries` retries (re-signed with its
    count, as the worker does): not the text its inbox holds."""
    return bus.runtime.deliverer.with_retry_count(Envelope.parse(wire), tries)


def held_by(bus, agent, sender):
    return int(
        bus.runtime.store.redis.hget(bus.runtime.store.keys.inbox(agent).senders, sender) or 0
    )


def test_a_dead_message_leaves_the_inbox_and_its_replay_puts_it_back(inbox, agents):
    bus, agent = inbox
    runs, alice = bus.runtime.handler_runs, agents("alice")
    message_id, wire = sent(bus, alice, agent, "job")
    assert runs.start(agent, message_id) == 1  # the control: in the inbox, a run counts
    assert held_by(bus, agent, alice) == 1
    assert runs.bury(agent, message_id, at_try(bus, wire, 3))
    assert bus.runtime.store.inbox_depth(agent) == (0, 0)
    assert held_by(bus, agent, alice) == 0  # its share given back
    assert runs.start(agent, message_id) == -1  # a task that comes back dies again
    assert runs.reopen_for_replay(agent, Envelope.parse(at_try(bus, wire, 3))) == "revived"
    assert bus.runtime.store.inbox_depth(agent) == (1, 0) and held_by(bus, agent, alice) == 1
    assert runs.start(agent, message_id) == 1  # a new cycle of runs
    assert runs.reopen_for_replay(agent, Envelope.parse(wire)) == "in_inbox"
    [back] = bus.read(agent)
    assert (back.id, back.payload, back.sender) == (message_id, "job", alice)


def test_a_forged_or_leftover_dead_letter_puts_nothing_back(inbox, agents):
    bus, agent = inbox
    runs, alice = bus.runtime.handler_runs, agents("alice")
    message_id, wire = sent(bus, alice, agent, "job")
    forged = json.dumps(json.loads(wire) | {"from": agents("mallory"), "payload": "x"})
    assert not runs.bury(agent, message_id, forged)  # a forgery buries nothing
    assert bus.runtime.store.inbox_depth(agent) == (1, 0)
    assert runs.bury(agent, message_id, wire)
    assert runs.reopen_for_replay(agent, Envelope.parse(forged)) == "gone"
    assert bus.runtime.store.inbox_depth(agent) == (0, 0)
    assert runs.reopen_for_replay(agent, Envelope.parse(wire)) == "revived"  # the control
    bus.runtime.store.ack_handled(agent, message_id)  # handled this time
    # A second dead letter of the same message, left over (or copied): nothing to run.
    assert runs.reopen_for_replay(agent, Envelope.parse(wire)) == "gone"
    assert bus.runtime.store.inbox_depth(agent) == (0, 0)
    assert runs.start(agent, message_id) == 0


def test_a_replay_waits_for_room_in_the_inbox_and_in_its_senders_share(inbox, agents):
    bus, agent = inbox
    runs = bus.runtime.handler_runs
    alice, bob, carol = agents("alice"), agents("bob"), agents("carol")
    dead_id, dead_wire = sent(bus, alice, agent, "failed")
    assert runs.bury(agent, dead_id, dead_wire)
    alices = [sent(bus, alice, agent, n)[0] for n in range(2)]  # alice's share, full again
    with pytest.raises(InboxFull, match="share") as refused:
        runs.reopen_for_replay(agent, Envelope.parse(dead_wire))
    assert "once there is room" in refused.value.message
    bus.runtime.store.ack_handled(agent, alices[0])
    bobs = [sent(bus, bob, agent, n)[0] for n in range(2)]
    sent(bus, carol, agent, "first")  # 4 in the inbox: its cap
    with pytest.raises(InboxFull, match="cap"):
        runs.reopen_for_replay(agent, Envelope.parse(dead_wire))
    with pytest.raises(InboxFull):  # the same cap holds for new mail: the control
        bus.send_message({"from": carol, "to": agent, "payload": "second"})
    bus.runtime.store.ack_handled(agent, bobs[0])
    assert runs.reopen_for_replay(agent, Envelope.parse(dead_wire)) == "revived"
    assert dead_id in {m.id for m in bus.read(agent, limit=10)}


def test_a_purge_forgets_the_buried_message(inbox, agents):
    bus, agent = inbox
    runs = bus.runtime.handler_runs
    message_id, wire = sent(bus, agents("alice"), agent, "job")
    assert runs.bury(agent, message_id, wire)
    forged = json.dumps(json.loads(wire) | {"payload": "x"})
    assert not runs.forget_buried(agent, message_id, forged)
    assert runs.forget_buried(agent, message_id, at_try(bus, wire, 2))
    assert runs.reopen_for_replay(agent, Envelope.parse(wire)) == "gone"
    assert runs.start(agent, message_id) == 0
