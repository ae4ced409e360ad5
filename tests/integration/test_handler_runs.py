"""A worker agent's message that died is buried: out of its inbox (its place and its
sender's share given back), a marker kept, and readied again by a replay under the inbox's
cap and share, its status `queued` in the same step. A copy of its dead letter (left over,
forged, unsigned, or one whose message runs already) readies nothing, and a purge of such
a copy takes nothing that lives. Real Redis and RabbitMQ; the messages reach the worker
agent's inbox in their sender's admission, and no agent process takes them from its queue."""

from __future__ import annotations

import json

import orjson
import pytest

from bus.envelope import Envelope
from bus.errors import BusUnavailable, InboxFull, NothingToReplay
from bus.topology import agent_queue
from tests.support.processes import msgbus
from tests.support.waiting import wait_for
from tests.support.wire import publish_dead


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
    senders = bus.runtime.store.keys.inbox(agent).senders
    return int(bus.runtime.store.redis.hget(senders, sender) or 0)


def depth(bus, agent):
    return sum(bus.runtime.store.inbox_depth(agent))


def died(env, bus, agent, message_id, wire, copies=1):
    """What the worker does when the handler fails to the end: the status `dead`, the
    message buried, its task rejected into the dead letters (`copies` of it)."""
    bus.runtime.store.advance_status([message_id], "dead", force=True, reason="handler_failed")
    assert bus.runtime.handler_runs.bury(agent, message_id, wire, "handler_failed")
    for _ in range(copies):
        letter(env, agent, message_id, at_try(bus, wire, 1))
    wait_for(
        lambda: sum(d.id == message_id for d in bus.dead_letters()) == copies, 30, "the letters"
    )


def letter(env, agent, message_id, wire):
    body = json.dumps([[agent, wire], {}, {"callbacks": None}]).encode()
    publish_dead(env, f"{message_id}:{agent}", body, "application/json", {"task": "bus.handle"})


def fanned_out(env, bus, agents, worker_agents, readers=()):
    """A topic message delivered to `worker_agents` and plain `readers` (a worker running):
    (its receipt, the wire the first worker agent's inbox holds)."""
    env.start_worker()
    topic = agents("jobs")
    for agent in worker_agents:
        bus.runtime.store.register_worker_agent(agent)
        bus.runtime.broker.declare_queue(agent_queue(bus.settings, agent))
    for agent in [*worker_agents, *readers]:
        bus.subscribe(agent, [topic])
    receipt = bus.publish(agents("pub"), topic, {"n": 1}, metadata={"max_retries": 0})
    everyone = len(worker_agents) + len(readers)
    wait_for(lambda: bus.status(receipt.id).recipients == everyone, 30, "delivery to all")
    body = bus.runtime.keys.inbox(worker_agents[0]).body
    return receipt, bus.runtime.store.redis.hget(body, receipt.id)


def test_a_dead_message_leaves_the_inbox_and_its_replay_readies_it_again(inbox, agents):
    bus, agent = inbox
    runs, alice = bus.runtime.handler_runs, agents("alice")
    message_id, wire = sent(bus, alice, agent, "job")
    assert runs.start(agent, message_id) == 1  # the control: in the inbox, a run counts
    assert held_by(bus, agent, alice) == 1
    assert runs.bury(agent, message_id, at_try(bus, wire, 3), "handler_failed")
    assert depth(bus, agent) == 0
    assert held_by(bus, agent, alice) == 0  # its share given back
    assert runs.start(agent, message_id) == -1  # a task that comes back dies again
    assert runs.reopen_for_replay(agent, Envelope.parse(at_try(bus, wire, 3)), 1) == "revived"
    assert depth(bus, agent) == 1 and held_by(bus, agent, alice) == 1
    status = bus.status(message_id)
    assert status.status.value == "queued"
    assert runs.start(agent, message_id) == 1  # a new cycle of runs
    [back] = bus.read(agent)
    assert (back.id, back.payload, back.sender) == (message_id, "job", alice)


def test_a_dead_message_left_in_the_inbox_is_readied_only_while_dead(inbox, agents):
    """Died while Redis was away (not buried): the replay finds it in the inbox. A copy of
    its dead letter while the replay runs, or while it is handled for the first time (a
    forgery of a live message), readies nothing: the handler would run twice at once."""
    bus, agent = inbox
    runs = bus.runtime.handler_runs
    message_id, wire = sent(bus, agents("alice"), agent, "job")
    envelope = Envelope.parse(at_try(bus, wire, 2))
    with pytest.raises(NothingToReplay, match="being handled"):  # alive: never
        runs.reopen_for_replay(agent, envelope, 1)
    bus.runtime.store.advance_status([message_id], "dead", force=True, reason="handler_failed")
    assert runs.reopen_for_replay(agent, envelope, 1) == "in_inbox"  # the control
    with pytest.raises(NothingToReplay, match="older than its replay 1"):  # a second copy
        runs.reopen_for_replay(agent, envelope, 1)
    with pytest.raises(NothingToReplay, match="being handled"):  # even one counted later
        runs.reopen_for_replay(agent, envelope, 2)


def test_a_second_copy_of_a_dead_letter_while_its_replay_runs_readies_nothing(
    inbox, fresh_env, agents
):
    bus, agent = inbox
    message_id, wire = sent(bus, agents("alice"), agent, "job")
    died(fresh_env, bus, agent, message_id, wire, copies=2)
    with pytest.raises(NothingToReplay, match="older than its replay") as refused:
        bus.replay_dead_letters([message_id])
    assert refused.value.fields["replayed"] == [message_id]  # one of the two went
    assert [d.id for d in bus.dead_letters()] == [message_id]  # the other stays
    assert bus.status(message_id).status.value == "queued"
    assert bus.runtime.handler_runs.start(agent, message_id) == 1


def test_replay_all_says_which_letters_it_refused_and_which_it_replayed(inbox, fresh_env, agents):
    """`dlq replay --all` once only logged its refusals and exited 0: the operator never
    learned that a letter stayed, nor why."""
    bus, agent = inbox
    message_id, wire = sent(bus, agents("alice"), agent, "job")
    died(fresh_env, bus, agent, message_id, wire, copies=2)
    out = msgbus(fresh_env, "dlq", "replay", "--all", "--json")
    assert out.returncode == 5, out
    assert "older than its replay 1" in out.stderr and message_id in out.stderr
    assert bus.status(message_id).status.value == "queued"  # the first copy went
    assert [d.id for d in bus.dead_letters()] == [message_id]  # the second stays
    control = msgbus(fresh_env, "dlq", "purge", "--all", "--json")  # nothing refused there
    assert control.returncode == 0 and json.loads(control.stdout) == {"purged": [message_id]}
    assert msgbus(fresh_env, "dlq", "replay", "--all", "--json").returncode == 0  # none left


def test_a_copy_the_bus_did_not_sign_readies_nothing(inbox, fresh_env, agents):
    bus, agent = inbox
    message_id, wire = sent(bus, agents("alice"), agent, "job")
    died(fresh_env, bus, agent, message_id, wire)
    bus.purge_dead_letters([message_id])  # only the forgery will be there
    bus.runtime.store.advance_status([message_id], "dead", force=True, reason="handler_failed")
    assert (
        bus.runtime.handler_runs.bury(agent, message_id, wire, "handler_failed") is False
    )  # buried already
    unsigned = orjson.loads(wire) | {"signature": "0" * 64}
    letter(fresh_env, agent, message_id, orjson.dumps(unsigned).decode())
    wait_for(lambda: bus.dead_letters(), 30, "the forgery")
    with pytest.raises(NothingToReplay):
        bus.replay_dead_letters([message_id])
    assert depth(bus, agent) == 0


def test_a_forged_or_leftover_dead_letter_readies_nothing(inbox, agents):
    bus, agent = inbox
    runs, alice = bus.runtime.handler_runs, agents("alice")
    message_id, wire = sent(bus, alice, agent, "job")
    forged = json.dumps(json.loads(wire) | {"from": agents("mallory"), "payload": "x"})
    assert not runs.bury(agent, message_id, forged, "handler_failed")  # a forgery buries nothing
    assert depth(bus, agent) == 1
    bus.runtime.store.advance_status([message_id], "dead", force=True, reason="handler_failed")
    assert runs.bury(agent, message_id, wire, "handler_failed")
    with pytest.raises(NothingToReplay):
        runs.reopen_for_replay(agent, Envelope.parse(forged), 1)
    assert depth(bus, agent) == 0
    assert runs.reopen_for_replay(agent, Envelope.parse(wire), 1) == "revived"  # the control
    bus.runtime.store.ack_handled(agent, message_id)  # handled this time
    with pytest.raises(NothingToReplay, match="older than its replay"):  # a leftover copy
        runs.reopen_for_replay(agent, Envelope.parse(wire), 1)
    with pytest.raises(NothingToReplay, match="handled or purged"):  # one counted later
        runs.reopen_for_replay(agent, Envelope.parse(wire), 2)
    assert depth(bus, agent) == 0 and runs.start(agent, message_id) == 0


def test_a_replay_waits_for_room_and_a_refusal_changes_nothing(inbox, fresh_env, agents):
    bus, agent = inbox
    alice, bob, carol = agents("alice"), agents("bob"), agents("carol")
    dead_id, dead_wire = sent(bus, alice, agent, "failed")
    died(fresh_env, bus, agent, dead_id, dead_wire)
    alices = [sent(bus, alice, agent, n)[0] for n in range(2)]  # alice's share, full again
    with pytest.raises(InboxFull, match="share") as refused:
        bus.replay_dead_letters([dead_id])
    assert "once there is room" in refused.value.message
    [listed] = bus.dead_letters()
    assert listed.replays == 0 and bus.status(dead_id).status.value == "dead"
    bus.runtime.store.ack_handled(agent, alices[0])
    for n in range(2):
        sent(bus, bob, agent, n)
    sent(bus, carol, agent, "first")  # 4 in the inbox: its cap
    with pytest.raises(InboxFull, match="cap"):
        bus.replay_dead_letters([dead_id])
    with pytest.raises(InboxFull):  # the same cap holds for new mail: the control
        bus.send_message({"from": carol, "to": agent, "payload": "second"})
    bus.runtime.store.ack_handled(agent, alices[1])
    assert bus.replay_dead_letters([dead_id]) == [dead_id]
    assert dead_id in {m.id for m in bus.read(agent, limit=10)}


def test_a_purge_forgets_the_dead_message_and_never_takes_a_live_one(inbox, fresh_env, agents):
    bus, agent = inbox
    message_id, wire = sent(bus, agents("alice"), agent, "job")
    died(fresh_env, bus, agent, message_id, wire, copies=2)
    with pytest.raises(NothingToReplay):
        bus.replay_dead_letters([message_id])  # one replayed, one left over
    assert bus.purge_dead_letters([message_id]) == [message_id]
    assert depth(bus, agent) == 1  # the replayed message lives on
    assert bus.runtime.handler_runs.start(agent, message_id) == 1
    # The control: a purge of a message that is dead takes its marker.
    other_id, other_wire = sent(bus, agents("bob"), agent, "job")
    died(fresh_env, bus, agent, other_id, other_wire)
    assert bus.runtime.redis.exists(bus.runtime.keys.buried(agent, other_id))
    assert bus.purge_dead_letters([other_id]) == [other_id]
    assert not bus.runtime.redis.exists(bus.runtime.keys.buried(agent, other_id))


def test_a_listing_buries_a_message_that_died_while_redis_was_away(inbox, fresh_env, agents):
    """Its worker could record neither the death nor the burial; the dead letter is
    there. Listing the dead letters records the death and buries it: it gives back its
    place in the inbox, and a replay readies it all the same."""
    bus, agent = inbox
    message_id, wire = sent(bus, agents("alice"), agent, "job")
    live_id, _ = sent(bus, agents("bob"), agent, "live")
    assert bus.status(message_id).status.value == "delivered"  # as the worker left it
    letter(fresh_env, agent, message_id, at_try(bus, wire, 1))
    wait_for(lambda: bus.dead_letters(), 30, "the letter")
    assert bus.status(message_id).status.value == "dead"
    assert depth(bus, agent) == 1  # bob's, still waiting for its handler: the control
    assert bus.runtime.handler_runs.start(agent, live_id) == 1
    assert bus.runtime.handler_runs.start(agent, message_id) == -1
    assert bus.replay_dead_letters([message_id]) == [message_id]
    assert depth(bus, agent) == 2 and bus.status(message_id).status.value == "queued"


def test_burial_and_replay_take_the_message_off_the_outbox_list(inbox, fresh_env, agents):
    """Its sender was killed before its confirm, so the outbox's sweep would publish its
    delivery again once the lease passed: after a replay readied it, that dispatched a
    second handler run beside the replay's."""
    bus, agent = inbox
    keys, redis = bus.runtime.keys, bus.runtime.redis
    message_id, wire = sent(bus, agents("alice"), agent, "job")
    redis.zadd(keys.unconfirmed, {message_id: 0})  # as a killed sender leaves it
    redis.hset(keys.unconfirmed_wires, message_id, wire)
    died(fresh_env, bus, agent, message_id, wire)
    assert redis.zscore(keys.unconfirmed, message_id) is None
    redis.zadd(keys.unconfirmed, {message_id: 0})  # again, for the replay
    redis.hset(keys.unconfirmed_wires, message_id, wire)
    assert bus.replay_dead_letters([message_id]) == [message_id]
    assert redis.zscore(keys.unconfirmed, message_id) is None
    assert not redis.hexists(keys.unconfirmed_wires, message_id)


def test_a_publish_that_fails_after_the_replay_readied_it_leaves_it_replayable(
    inbox, fresh_env, agents
):
    bus, agent = inbox
    first_id, first_wire = sent(bus, agents("alice"), agent, "one")
    second_id, second_wire = sent(bus, agents("bob"), agent, "two")
    died(fresh_env, bus, agent, first_id, first_wire)
    died(fresh_env, bus, agent, second_id, second_wire)
    publish, calls = bus.runtime.broker.publish, []

    def second_fails(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise BusUnavailable("the broker is away (test)")
        return publish(*args, **kwargs)

    bus.runtime.broker.publish = second_fails
    with pytest.raises(BusUnavailable) as cut:
        bus.replay_dead_letters([first_id, second_id])
    assert cut.value.fields["replayed"] == [first_id]  # what went before it, said
    bus.runtime.broker.publish = publish
    assert bus.status(second_id).status.value == "dead"  # not `queued` with no task
    assert [d.id for d in bus.dead_letters()] == [second_id]
    assert bus.replay_dead_letters([second_id]) == [second_id]  # its letter readies it
    assert bus.status(second_id).status.value == "queued"


def test_a_message_that_died_while_redis_was_away_is_replayed_by_name(inbox, fresh_env, agents):
    """Its status still `retrying` (the worker could not record the death), the message in
    the inbox: a replay named by its id records the death first, then readies it."""
    bus, agent = inbox
    message_id, wire = sent(bus, agents("alice"), agent, "job")
    bus.runtime.store.advance_status([message_id], "retrying", force=True, reason="unavailable")
    letter(fresh_env, agent, message_id, at_try(bus, wire, 1))
    wait_for(lambda: bus.stats().dead_letters == 1, 30, "the letter")  # not listed first
    assert bus.replay_dead_letters([message_id]) == [message_id]
    assert bus.status(message_id).status.value == "queued"
    assert depth(bus, agent) == 1 and bus.runtime.handler_runs.start(agent, message_id) == 1


def test_fan_out_to_two_worker_agents_one_death_says_nothing_of_the_other(fresh_env, agents):
    """A topic message to worker agents A and B; A's died, was replayed and runs again;
    then B's dies, and the status they share says `dead`. A's leftover letter must neither
    start a second run of A nor, purged, take A's live message."""
    bus, a, b = fresh_env.bus(), agents("a"), agents("b")
    receipt, wire = fanned_out(fresh_env, bus, agents, [a, b])
    died(fresh_env, bus, a, receipt.id, wire, copies=2)
    with pytest.raises(NothingToReplay):
        bus.replay_dead_letters([receipt.id])  # one readies A, the other is its leftover
    bus.runtime.store.advance_status([receipt.id], "dead", force=True, reason="handler_failed")
    assert bus.runtime.handler_runs.bury(b, receipt.id, wire, "handler_failed")  # B's death
    with pytest.raises(NothingToReplay, match="older than its replay"):
        bus.replay_dead_letters([receipt.id])
    assert bus.purge_dead_letters([receipt.id]) == [receipt.id]
    assert sum(bus.runtime.store.inbox_depth(a)) == 1  # A's live message stays
    assert bus.runtime.handler_runs.start(a, receipt.id) == 1
    bus.close()


def test_fan_out_a_replay_for_one_worker_agent_leaves_the_others_death_replayable(
    fresh_env, agents
):
    """A topic message to worker agents A and B. A's handler died and its letter was
    replayed: the status they share says `queued`, for A's new run. B's died while Redis
    was away for its worker (still in B's inbox, nothing recorded): its letter must still
    ready it, while a status B's own run wrote keeps refusing a copy."""
    bus, a, b = fresh_env.bus(), agents("a"), agents("b")
    receipt, wire = fanned_out(fresh_env, bus, agents, [a, b])
    died(fresh_env, bus, a, receipt.id, wire)
    assert bus.replay_dead_letters([receipt.id]) == [receipt.id]  # A's new run
    letter(fresh_env, b, receipt.id, at_try(bus, wire, 1))  # B's death, unrecorded
    wait_for(lambda: bus.stats().dead_letters == 1, 30, "B's letter")
    record = bus.runtime.deliverer.record
    record(receipt.id, "retrying", "handler_failed", "boom", 1, force=True, run_of=b)
    with pytest.raises(NothingToReplay, match="being handled"):  # B's own run: the control
        bus.replay_dead_letters([receipt.id])
    record(receipt.id, "retrying", "handler_failed", "boom", 1, force=True, run_of=a)
    assert bus.replay_dead_letters([receipt.id]) == [receipt.id]
    assert sum(bus.runtime.store.inbox_depth(b)) == 1
    assert bus.runtime.handler_runs.replays_readied(b, receipt.id) == 1
    assert bus.runtime.handler_runs.start(b, receipt.id) == 1  # a new cycle of B's runs
    assert bus.runtime.handler_runs.start(a, receipt.id) == 1  # A's own goes on
    bus.close()


def test_fan_out_a_worker_agents_letter_lists_its_own_death_and_replays(fresh_env, agents):
    """A topic message to worker agents A and B and a plain reader R. A's handler crashed
    its process; B's copy was replayed twice; then R read the message. The status they
    share says `read`, replays 2: A's letter was listed `retries_exhausted` (transient: beat
    replayed it, and the handler killed A's process again) with B's replays."""
    bus, a, b, r = fresh_env.bus(), agents("a"), agents("b"), agents("r")
    receipt, wire = fanned_out(fresh_env, bus, agents, [a, b], readers=[r])
    store = bus.runtime.store
    store.advance_status([receipt.id], "dead", force=True, reason="handler_crashed")
    assert bus.runtime.handler_runs.bury(a, receipt.id, wire, "handler_crashed")
    letter(fresh_env, a, receipt.id, at_try(bus, wire, 1))
    wait_for(lambda: bus.stats().dead_letters == 1, 30, "A's letter")
    store.advance_status([receipt.id], "queued", force=True, replays=2, run_of=b)  # B's replays
    assert [m.id for m in bus.read(r)] == [receipt.id]
    assert bus.status(receipt.id).status.value == "read"
    [listed] = bus.dead_letters()
    assert (listed.reason, listed.replays) == ("handler_crashed", 0)
    assert bus.runtime.handler_runs.death(b, receipt.id) is None  # the control: B's is not A's
    bus.close()


def test_a_purge_of_an_old_copy_leaves_the_later_death_replayable(inbox, fresh_env, agents):
    """The message died, was replayed, and died again: purging a leftover copy of its first
    letter must not take the marker its second letter replays from."""
    bus, agent = inbox
    message_id, wire = sent(bus, agents("alice"), agent, "job")
    died(fresh_env, bus, agent, message_id, wire, copies=2)
    with pytest.raises(NothingToReplay):
        bus.replay_dead_letters([message_id])  # one readies it; the other, a leftover, stays
    bus.runtime.store.advance_status([message_id], "dead", force=True, reason="handler_failed")
    assert bus.runtime.handler_runs.bury(
        agent, message_id, wire, "handler_failed"
    )  # its second death
    body = json.dumps([[agent, at_try(bus, wire, 2)], {}, {"callbacks": None}]).encode()
    headers = {"task": "bus.handle", "x-bus-replays": 1}
    publish_dead(fresh_env, f"{message_id}:{agent}", body, "application/json", headers)
    wait_for(lambda: len(bus.dead_letters()) == 2, 30, "both letters")
    assert bus.dead_letter_queue.purge([message_id], limit=1) == [message_id]  # the old one
    assert [d.replays for d in bus.dead_letters()] == [1]
    assert bus.replay_dead_letters([message_id]) == [message_id]  # the control: it readies
    assert depth(bus, agent) == 1
