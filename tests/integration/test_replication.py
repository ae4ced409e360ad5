"""MESSAGE_BUS_REDIS_MIN_REPLICAS against a Redis with no replicas: a delivery that no
replica confirmed is a transient error naming the setting (its write is made, the task
retries); an admission or an ack is answered all the same and the shortfall is counted."""

from __future__ import annotations

import pytest
import redis
from prometheus_client import REGISTRY

from bus.errors import NotReplicated
from bus.replication import Replication
from bus.scripts import Script, ScriptRunner

pytestmark = pytest.mark.timeout(60)

INCR = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")


@pytest.fixture
def runner_with(script_backend, redis_client):
    def make(replication: Replication) -> ScriptRunner:
        return ScriptRunner(redis_client, replication, script_backend(redis_client))

    return make


def shortfalls() -> float:
    """What /metrics shows for the errors counted as not replicated."""
    value = REGISTRY.get_sample_value("message_bus_errors_total", {"kind": "not_replicated"})
    return value or 0.0


def test_an_unconfirmed_delivery_raises_not_replicated_naming_the_settings(
    runner_with, redis_client, redis_key
):
    runner = runner_with(Replication(1, 0.05))
    with pytest.raises(NotReplicated) as raised:
        runner.call(INCR, [redis_key], [1], action="deliver a message", confirm="require")
    assert "MESSAGE_BUS_REDIS_MIN_REPLICAS" in raised.value.message
    assert "MESSAGE_BUS_REDIS_REPLICA_TIMEOUT" in raised.value.message
    assert "deliver a message" in raised.value.message
    assert (raised.value.acknowledged, raised.value.required) == (0, 1)
    assert redis_client.get(redis_key) == "1"  # the write was made: only its durability is in doubt


def test_without_required_replicas_no_wait_is_sent(runner_with, redis_key):
    runner = runner_with(Replication(0))
    assert runner.call(INCR, [redis_key], [2], action="deliver a message", confirm="require") == 2
    assert Replication(0).packed() == b""


def test_a_call_that_asks_no_confirmation_is_not_held_to_the_replicas(runner_with, redis_key):
    runner = runner_with(Replication(1, 0.05))
    assert runner.call(INCR, [redis_key], [2], action="read the inbox") == 2


def test_a_reloaded_script_is_still_followed_by_its_wait(runner_with, redis_client, redis_key):
    runner = runner_with(Replication(1, 0.05))
    with pytest.raises(NotReplicated):
        runner.call(INCR, [redis_key], [1], action="deliver a message", confirm="require")
    redis_client.script_flush()  # a new primary has not seen the script
    with pytest.raises(NotReplicated):
        runner.call(INCR, [redis_key], [1], action="deliver a message", confirm="require")
    assert redis_client.get(redis_key) == "2"


def test_an_unconfirmed_batch_raises_not_replicated_once_every_call_ran(
    runner_with, redis_client, redis_key
):
    runner = runner_with(Replication(1, 0.05))
    redis_client.script_flush()
    with pytest.raises(NotReplicated):
        runner.many([(INCR, [redis_key], [1])] * 3, action="deliver a batch", confirm="require")
    assert redis_client.get(redis_key) == "3"


def test_an_ack_is_answered_and_its_shortfall_counted(runner_with, redis_key):
    before = shortfalls()
    reply = runner_with(Replication(1, 0.05)).call(
        INCR, [redis_key], [5], action="ack messages", confirm="note"
    )
    assert reply == 5
    assert shortfalls() == before + 1
    # Off: the same call, no WAIT, nothing counted.
    assert (
        runner_with(Replication(0)).call(
            INCR, [redis_key], [1], action="ack messages", confirm="note"
        )
        == 6
    )
    assert shortfalls() == before + 1


def test_a_wait_on_a_replica_is_an_error_not_a_confirmation(redis_client, redis_key):
    with pytest.raises((NotReplicated, redis.RedisError)):
        Replication(1, 0.05).require(redis.ResponseError("ERR WAIT cannot be used"), "x")
