"""Every field of a message, not only its payload, is content from its sender: a value
JSON cannot carry (a lone surrogate) is refused at send as invalid, through the Python API
and the CLI, never an exception of the encoder; extension fields and headers shaped like
serializer tags arrive intact."""

from __future__ import annotations

import pytest

from bus.errors import ValidationError
from tests.support.hostile import describe, exactly_equal
from tests.support.processes import msgbus
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


ENVELOPE_FIELDS = [
    ("id", {"id": "m-\ud800"}),
    ("correlation_id", {"correlation_id": "c-\ud800"}),
    ("dedup_key", {"metadata": {"dedup_key": "k-\ud800"}}),
    ("a header value", {"metadata": {"headers": {"h": "\ud800"}}}),
    ("a header key", {"metadata": {"headers": {"\ud800": "v"}}}),
    ("an extra field", {"x-extension": "\ud800"}),
    ("an extra field's key", {"x-extension": {"\udfff": 1}}),
]


@pytest.mark.parametrize(("field", "extra"), ENVELOPE_FIELDS, ids=[f for f, _ in ENVELOPE_FIELDS])
def test_a_lone_surrogate_anywhere_in_a_message_is_refused_as_invalid(bus, field, extra):
    message = {"from": "env-sender", "to": "env-reader", "payload": 1}
    for key, value in extra.items():
        message[key] = {**message.get(key, {}), **value} if key == "metadata" else value
    try:
        receipt = bus.send_message(message)
    except ValidationError as exc:
        assert "surrogate" in exc.message or "unicode" in exc.message, exc.message
        return
    except Exception as exc:  # noqa: BLE001 - reported as what it is
        pytest.fail(f"{field}: {type(exc).__name__} escaped instead of a ValidationError: {exc}")
    [got] = wait_for(lambda: bus.read("env-reader", limit=1, wait=1), 30, "the message")
    bus.ack("env-reader", [got.id])
    seen = {"headers": got.metadata.headers, "extra": got.model_extra}
    pytest.fail(f"{field}: accepted as {receipt.id}; delivered as {describe(seen)}")


@pytest.mark.parametrize(
    "message",
    [
        '{"to": "cli-env-reader", "payload": {"\\ud800": 1}}',
        '{"to": "cli-env-reader", "payload": 1, "id": "m-\\ud800"}',
        '{"to": "cli-env-reader", "payload": 1, "x-extension": "\\ud800"}',
    ],
    ids=["payload key", "id", "extra field"],
)
def test_the_cli_refuses_a_lone_surrogate_anywhere_with_one_error_line(module_env, worker, message):
    out = msgbus(module_env, "send", "--from", "cli-env-sender", "--message", "-", stdin=message)
    assert "Traceback" not in out.stderr, out.stderr[-1500:]
    assert out.returncode == 2 and out.stderr.startswith("error: "), out.stderr
    assert "surrogate" in out.stderr or "unicode" in out.stderr, out.stderr


def test_extension_fields_and_headers_shaped_like_tags_arrive_intact(bus):
    tag = {"__type__": "bytes", "__value__": "AA=="}
    receipt = bus.send_message(
        {
            "from": "ext-sender",
            "to": "ext-reader",
            "payload": tag,
            "x-extension": {"py/object": "os.system", "nested": [tag]},
            "metadata": {"headers": {"__type__": "datetime", "$type": "x"}},
        }
    )
    [got] = wait_for(lambda: bus.read("ext-reader", limit=1, wait=1), 30, "the message")
    bus.ack("ext-reader", [got.id])
    assert got.id == receipt.id and exactly_equal(tag, got.payload)
    assert exactly_equal(
        {"py/object": "os.system", "nested": [tag]}, got.model_extra["x-extension"]
    )
    assert got.metadata.headers == {"__type__": "datetime", "$type": "x"}


GIVEN_IDS = ["id", "trace_id"]


@pytest.mark.parametrize("field", GIVEN_IDS)
@pytest.mark.parametrize("value", [" ", "a\nb", "a\x00b", "*", "msg-[ab]?", "{bob}:x", "id-а", ""])
def test_an_id_a_sender_gives_is_letters_digits_and_a_few_marks(bus, field, value):
    """An id ends up in keys, logs and operators' shells: whitespace, control, glob, brace
    and look-alike characters are refused at the door, naming the field."""
    message = {"from": "env-sender", "to": "env-reader", "payload": 1, field: value}
    if value == "" and field == "id":
        assert bus.send_message(message).id  # an empty id is no id: the bus sets one
        return
    with pytest.raises(ValidationError, match=f"^{field}: .* is not an id"):
        bus.send_message(message)


@pytest.mark.parametrize("field", GIVEN_IDS)
def test_an_id_of_letters_digits_and_marks_is_taken(bus, field):
    value = "order-42:retry/1@eu.a+b=c_d"
    receipt = bus.send_message({"from": "env-sender", "to": "env-reader", field: value})
    assert receipt.status.value == "queued"
    if field == "id":
        assert receipt.id == value
