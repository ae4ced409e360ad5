"""bus.dead_letter has a bound in count and bytes: nothing drains it by itself, and any
sender can fill it with its own messages expiring at once. Past the bound the oldest
letters go and the newest are kept; a queue an older bus declared without the bound is
used as it is, with a warning saying how to bound it."""

from __future__ import annotations

import logging

import pytest

from bus import topology
from bus.settings import Settings
from bus.topology import DEAD_LETTER_QUEUE, dead_letter_queue
from tests.support.env import queue_depth
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

BOUND = 5


def _expire(bus, sender, count):
    """`count` messages that expire in the queue at once (no worker runs)."""
    ids = []
    for i in range(count):
        receipt = bus.send_message(
            {"from": sender, "to": "dl-nobody", "payload": i, "metadata": {"ttl": 0.001}}
        )
        ids.append(receipt.id)
    wait_for(lambda: queue_depth(bus, "bus.normal") == 0, 20, "the messages to expire")
    return ids


def test_the_dead_letter_queue_keeps_its_bound_and_the_newest_letters(fresh_env):
    fresh_env.overrides["MESSAGE_BUS_DEAD_LETTER_MAX_LENGTH"] = str(BOUND)
    bus = fresh_env.bus()
    bus.runtime.broker.ensure_topology()
    try:
        # Below the bound every letter is kept (the positive control).
        first = _expire(bus, "dl-sender", BOUND - 1)
        wait_for(lambda: queue_depth(bus, DEAD_LETTER_QUEUE) == BOUND - 1, 20, "the first letters")
        assert sorted(d.id for d in bus.dead_letters(limit=100)) == sorted(first)
        # Past it the oldest go: the newest BOUND stay, and nothing more.
        later = _expire(bus, "dl-sender", 8)
        newest = (first + later)[-BOUND:]
        wait_for(
            lambda: sorted(d.id for d in bus.dead_letters(limit=100)) == sorted(newest),
            20,
            "the newest letters, and only those",
        )
        assert queue_depth(bus, DEAD_LETTER_QUEUE) == BOUND
        assert all(d.reason == "expired" for d in bus.dead_letters(limit=100))
        # A dropped letter's status still tells what became of it.
        assert bus.status(first[0]).status.value in ("queued", "expired")
    finally:
        bus.close()


def test_the_bound_is_in_count_and_bytes():
    args = dead_letter_queue(
        Settings(dead_letter_max_length=7, dead_letter_max_bytes=4096)
    ).queue_arguments
    assert args["x-max-length"] == 7 and args["x-max-length-bytes"] == 4096
    assert args["x-overflow"] == "drop-head"


def test_a_dead_letter_queue_from_an_older_bus_is_used_as_it_is(fresh_env, caplog):
    bus = fresh_env.bus()
    try:
        with bus.runtime.broker.connection() as conn:
            channel = conn.channel()
            channel.queue_declare(DEAD_LETTER_QUEUE, durable=True, auto_delete=False)
            channel.close()
            with caplog.at_level(logging.WARNING, logger="bus.topology"):
                default = conn.default_channel
                topology.declare(default, fresh_env.settings())
                assert default.is_open  # the refusal closed a channel of its own only
        assert "rabbitmqctl set_policy" in caplog.text and DEAD_LETTER_QUEUE in caplog.text
        # The bus works on it: a message expires into it and is listed.
        [expired] = _expire(bus, "dl-old", 1)
        wait_for(lambda: [d.id for d in bus.dead_letters(limit=10)] == [expired], 20, "the letter")
    finally:
        bus.close()
