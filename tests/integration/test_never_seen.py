"""Mail for agents that never connected is bounded in number (a sender's
MAX_UNSEEN_RECIPIENTS) and in time: the purge job drops a never-seen agent's mail once none
has come for it within STATUS_RETENTION, marks it expired with the reason, and frees the
sender's allowance. Before, the allowance expired with its set while the inboxes stayed
for good: 100 more made-up agents per retention window, forever, and no purge reached them.
"""

from __future__ import annotations

import pytest
import redis

from bus.errors import UnknownAgent
from bus.retention import purge_expired
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

CAP = 3


@pytest.fixture(scope="module")
def module_env(module_env):
    """The suite's bus for this module (its `worker` and `bus` fixtures serve it), with a
    small allowance of agents never seen."""
    module_env.overrides["MESSAGE_BUS_MAX_UNSEEN_RECIPIENTS"] = str(CAP)
    return module_env


def _keys_of(env, agent):
    client = redis.Redis.from_url(env.settings().redis_url, decode_responses=True)
    try:
        return sorted(client.scan_iter(match=f"{env.prefix}*{{{agent}}}*"))
    finally:
        client.close()


def _later(bus):
    """As the purge would run just past the status retention from now."""
    return bus.runtime.clock.now_ms() + (bus.settings.status_retention + 1) * 1000


def test_mail_no_one_came_for_is_dropped_after_the_retention_and_frees_the_allowance(
    module_env, bus, agents
):
    sender = agents("sender")
    ghosts = [agents(f"ghost{i}") for i in range(CAP)]
    sent = [bus.send_message({"from": sender, "to": g, "payload": g}).id for g in ghosts]
    depths = bus.runtime.store.inbox_depths
    wait_for(lambda: all(d == 1 for d in depths(ghosts).values()), 20, "the mail delivered")
    with pytest.raises(UnknownAgent):
        bus.send_message({"from": sender, "to": agents("one-more"), "payload": 0})

    # Within the retention the purge keeps it (the positive control).
    assert purge_expired(bus.runtime)["never_read_dropped"] == 0
    assert all(d == 1 for d in depths(ghosts).values())

    result = purge_expired(bus.runtime, now_ms=_later(bus))
    assert result["never_read_dropped"] == CAP
    for ghost in ghosts:
        assert _keys_of(module_env, ghost) == [], ghost
    for message_id in sent:
        status = bus.status(message_id)
        assert (status.status.value, status.reason) == ("expired", "recipient_never_connected")
    assert bus.runtime.store.ghost_ids() == []
    # The sender's allowance is free again.
    bus.send_message({"from": sender, "to": agents("one-more"), "payload": 0})


def test_an_agent_that_connected_keeps_its_mail_and_leaves_the_register(module_env, bus, agents):
    sender, late = agents("sender"), agents("late")
    bus.send_message({"from": sender, "to": late, "payload": "for later"})
    wait_for(lambda: bus.runtime.store.inbox_depths([late])[late] == 1, 20, "the mail")
    assert late in bus.runtime.store.ghost_ids()
    assert bus.subscriptions(late) == [] and bus.read(late, limit=1, wait=0) != []  # connects
    purge_expired(bus.runtime, now_ms=_later(bus))
    assert late not in bus.runtime.store.ghost_ids()
    assert bus.runtime.store.inbox_depths([late])[late] == 1


def test_mail_admitted_but_not_yet_delivered_is_not_dropped(module_env, bus, agents):
    """A purge between admission and delivery would let the delivery recreate an inbox that
    no register names: it waits for the next purge instead."""
    ghost = agents("pending")
    runtime = bus.runtime
    record_keys = runtime.keys.inbox(ghost)
    client = runtime.redis
    client.zadd(runtime.keys.ghosts, {ghost: 0})
    client.zadd(record_keys.pending, {"m-1": runtime.clock.now_ms() + 3_600_000})
    try:
        assert runtime.store.drop_ghost(ghost, _later(bus)) is None
        assert ghost in runtime.store.ghost_ids()
    finally:
        client.delete(record_keys.pending)
        client.zrem(runtime.keys.ghosts, ghost)
