"""MESSAGE_BUS_REDIS_MIN_REPLICAS against a Redis with no replicas: a delivery that no
replica confirmed is a transient error naming the setting (its write is made, the task
retries); an admission or an ack is answered all the same and the shortfall is counted."""

from __future__ import annotations

import uuid

import pytest
import redis

from bus import metrics
from bus.errors import NotReplicated
from bus.redis_conn import DirectScript, connect, redis_errors
from bus.replication import Replication
from tests.support.paths import REDIS_URL

pytestmark = pytest.mark.timeout(60)

INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@pytest.fixture
def client(services):
    client = connect(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def key(client):
    name = f"test:replication:{uuid.uuid4().hex}"
    yield name
    client.delete(name)


def shortfalls() -> float:
    return metrics.ERRORS.labels("not_replicated")._value.get()


def test_an_unconfirmed_delivery_raises_not_replicated_naming_the_settings(client, key):
    script = DirectScript(client, INCR, Replication(1, 0.05))
    with pytest.raises(NotReplicated) as raised, redis_errors("deliver a message"):
        script([key], [1], "deliver a message")
    assert "MESSAGE_BUS_REDIS_MIN_REPLICAS" in raised.value.message
    assert "MESSAGE_BUS_REDIS_REPLICA_TIMEOUT" in raised.value.message
    assert (raised.value.acknowledged, raised.value.required) == (0, 1)
    assert client.get(key) == "1"  # the write was made: only its durability is in doubt


def test_without_required_replicas_no_wait_is_sent(client, key):
    script = DirectScript(client, INCR, Replication(0))
    assert script([key], [2]) == 2
    assert Replication(0).packed() == b""


def test_a_reloaded_script_is_still_followed_by_its_wait(client, key):
    script = DirectScript(client, INCR, Replication(1, 0.05))
    with pytest.raises(NotReplicated):
        script([key], [1])
    client.script_flush()  # a new primary has not seen the script
    with pytest.raises(NotReplicated):
        script([key], [1])
    assert client.get(key) == "2"


def test_an_ack_is_answered_and_its_shortfall_counted(client, key):
    ack = client.register_script(INCR)
    before = shortfalls()
    reply = Replication(1, 0.05).script(client, ack, [key], [5], "ack messages")
    assert reply == 5
    assert shortfalls() == before + 1
    # Off: the same call, no WAIT, nothing counted.
    assert Replication(0).script(client, ack, [key], [1], "ack messages") == 6
    assert shortfalls() == before + 1


def test_a_wait_on_a_replica_is_an_error_not_a_confirmation(client, key):
    with pytest.raises((NotReplicated, redis.RedisError)):
        Replication(1, 0.05).require(redis.ResponseError("ERR WAIT cannot be used"), "x")
