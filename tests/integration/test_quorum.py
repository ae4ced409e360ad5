"""The same pipeline on quorum queues (the queue type is a setting; both must work)."""

from __future__ import annotations

import subprocess

import pytest

from msgbus.services import node_args
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


def test_quorum_queues_deliver_dead_letter_and_replay(fresh_env, agents):
    fresh_env.overrides["MESSAGE_BUS_QUEUE_TYPE"] = "quorum"
    bus = fresh_env.bus()
    sender, reader = agents("s"), agents("r")
    expired = bus.send_message(
        {"from": sender, "to": reader, "payload": "late", "metadata": {"ttl": 0.3}}
    )
    letters = wait_for(lambda: bus.dead_letters(), 15, "the expired message dead-lettered")
    assert [(d.id, d.reason) for d in letters] == [(expired.id, "expired")]

    listing = subprocess.run(
        [
            "rabbitmqctl",
            *node_args(),
            "list_queues",
            "-p",
            fresh_env.vhost,
            "name",
            "type",
            "--quiet",
        ],
        capture_output=True,
        text=True,
    ).stdout
    types = dict(line.split() for line in listing.splitlines() if line.strip())
    assert types["bus.normal"] == "quorum" and types["bus.dead_letter"] == "quorum"

    fresh_env.start_worker()
    receipt = bus.send_message(
        {"from": sender, "to": reader, "payload": "on quorum", "metadata": {"priority": "critical"}}
    )
    [message] = wait_for(lambda: bus.read(reader, limit=5, wait=0.5), 15, "delivery")
    assert message.id == receipt.id and message.payload == "on quorum"
    assert bus.purge_dead_letters(all=True) == [expired.id]
    assert bus.dead_letters() == []
