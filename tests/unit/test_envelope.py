"""Reading a message is total: an envelope with every field typed, or `malformed` with why."""

from __future__ import annotations

import orjson
import pytest
import redis

from bus.envelope import Envelope
from bus.errors import PermanentFailure
from bus.redis_conn import is_transient

GOOD = {
    "id": "m1",
    "from": "alice",
    "to": "bob",
    "type": "command",
    "timestamp": "2026-12-01T10:00:00.000000Z",
    "payload": {"__type__": "bytes", "__value__": "aGk="},
    "metadata": {"priority": "high", "ttl": 30},
}


def test_an_envelope_keeps_the_exact_text_and_reads_its_fields():
    text = orjson.dumps(GOOD).decode()
    envelope = Envelope.parse(text)
    assert envelope.text == text
    assert (envelope.id, envelope.sender, envelope.to, envelope.type) == (
        "m1",
        "alice",
        "bob",
        "command",
    )
    assert envelope.priority.queue == "bus.high"
    assert envelope.expires_ms == envelope.timestamp_ms + 30_000
    assert envelope.data["payload"] == {"__type__": "bytes", "__value__": "aGk="}


def test_a_task_argument_of_an_older_bus_is_read_as_it_came():
    assert Envelope.parse(GOOD).data == Envelope.parse(orjson.dumps(GOOD)).data


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("not json", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        ("[1, 2]", "a JSON list, not an object"),
        (42, "a int, not the message's JSON text"),
        (None, "a NoneType"),
        ({**GOOD, "id": ""}, "no valid id"),
        ({**GOOD, "id": "x" * 129}, "no valid id"),
        ({**GOOD, "from": None}, "has no sender"),
        ({**GOOD, "timestamp": "yesterday"}, "no valid timestamp"),
        ({**GOOD, "timestamp": 12}, "no valid timestamp"),
        ({**GOOD, "metadata": []}, "metadata that is not an object"),
        ({**GOOD, "metadata": {"priority": "urgent"}}, "unknown priority"),
    ],
)
def test_anything_else_is_malformed_with_the_reason(raw, why):
    with pytest.raises(PermanentFailure, match=why) as caught:
        Envelope.parse(raw)
    assert caught.value.reason == "malformed"


@pytest.mark.parametrize(
    "error",
    [
        redis.ReadOnlyError("You can't write against a read only replica.", status_code="READONLY"),
        redis.ResponseError("NOREPLICAS Not enough good replicas to write."),
        redis.ResponseError("MISCONF Redis is configured to save RDB snapshots"),
        redis.ResponseError("MASTERDOWN Link with MASTER is down"),
        redis.exceptions.OutOfMemoryError("command not allowed", status_code="OOM"),
        redis.BusyLoadingError("Redis is loading the dataset in memory"),
        redis.ConnectionError("Connection refused"),
        redis.TimeoutError("Timeout reading from socket"),
    ],
)
def test_redis_conditions_that_heal_are_transient(error):
    assert is_transient(error)


def test_redis_errors_that_do_not_heal_are_not_transient():
    assert not is_transient(redis.ResponseError("WRONGTYPE Operation against a key"))
    assert not is_transient(redis.ResponseError("ERR unknown command"))
    assert not is_transient(ValueError("not redis"))
