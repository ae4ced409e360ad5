"""The message model: the contract's names, aliases, addressing rules and patterns."""

from __future__ import annotations

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus.schema import Message, MessageStatus, MessageType, Subscription

SEED = {
    "from": "agent1",
    "to": "agent2",
    "type": "command",
    "payload": {"action": "process_task", "taskId": "123"},
    "metadata": {"priority": "high", "ttl": 3600, "topic": "task-processing"},
}


def test_the_seed_message_is_accepted_with_its_topic_as_a_label():
    m = Message.model_validate(SEED)
    assert (m.sender, m.to, m.type, m.metadata.priority.value) == (
        "agent1",
        "agent2",
        MessageType.command,
        "high",
    )
    assert m.metadata.topic == "task-processing" and m.topic is None and not m.is_topic


def test_camel_case_input_is_accepted_and_output_is_snake_case_with_from():
    m = Message.model_validate(
        {
            "from": "a",
            "to": "b",
            "correlationId": "c1",
            "replyTo": "a",
            "metadata": {"maxRetries": 5, "retryCount": 1, "dedupKey": "k"},
        }
    )
    wire = m.wire()
    assert wire["from"] == "a" and "sender" not in wire
    assert wire["correlation_id"] == "c1" and wire["reply_to"] == "a"
    assert wire["metadata"]["max_retries"] == 5 and wire["metadata"]["dedup_key"] == "k"


def test_unknown_fields_are_kept_not_dropped():
    wire = Message.model_validate({**SEED, "x_future": {"a": 1}}).wire()
    assert wire["x_future"] == {"a": 1}


@pytest.mark.parametrize("version,ok", [("1.0", True), ("1.7", True), ("2.0", False)])
def test_readers_accept_any_1x_version(version, ok):
    if ok:
        assert Message.model_validate({**SEED, "version": version}).version == version
    else:
        with pytest.raises(pydantic.ValidationError, match="not supported"):
            Message.model_validate({**SEED, "version": version})


@pytest.mark.parametrize("bad", ["Agent", "-lead", "", "a" * 65, "a b", "a/b", "bob\n", "bob\r"])
def test_agent_ids_outside_the_pattern_are_refused_naming_it(bad):
    with pytest.raises(pydantic.ValidationError, match=r"must match \^\[a-z0-9\]"):
        Message.model_validate({**SEED, "to": bad})


def test_a_trailing_newline_makes_no_look_alike_id_topic_or_version():
    """Python's "$" also matches before a final newline: "bob\n" would be a second bob."""
    assert Message.model_validate({**SEED, "to": "bob"}).to == "bob"  # the control
    for field, value in (("to", "bob\n"), ("from", "alice\n"), ("reply_to", "bob\n")):
        with pytest.raises(pydantic.ValidationError, match="must match"):
            Message.model_validate({**SEED, field: value})
    with pytest.raises(pydantic.ValidationError, match="topic"):
        Message.model_validate({"from": "a", "topic": "tasks/new\n"})
    with pytest.raises(pydantic.ValidationError, match="not supported"):
        Message.model_validate({**SEED, "version": "1.0\n"})


def test_extra_fields_set_to_null_travel_as_given():
    wire = Message.model_validate(
        {**SEED, "x_none": None, "metadata": {"x_meta": None, "priority": "high"}}
    ).wire()
    assert "x_none" in wire and wire["x_none"] is None
    assert "x_meta" in wire["metadata"] and wire["metadata"]["x_meta"] is None
    assert "trace_id" not in wire  # the bus's own unset fields stay out


def test_topics_allow_slashes_but_not_uppercase():
    assert Message.model_validate({"from": "a", "topic": "tasks/new"}).is_topic
    with pytest.raises(pydantic.ValidationError, match="topic"):
        Message.model_validate({"from": "a", "topic": "Tasks"})


def test_addressing_rules():
    with pytest.raises(pydantic.ValidationError, match="no address"):
        Message.model_validate({"from": "a"})
    star = Message.model_validate({"from": "a", "to": "*"})
    assert star.type is MessageType.broadcast and star.is_broadcast
    with pytest.raises(pydantic.ValidationError, match="broadcast goes to everyone"):
        Message.model_validate({"from": "a", "to": "b", "type": "broadcast"})
    only_meta_topic = Message.model_validate({"from": "a", "metadata": {"topic": "t"}})
    assert only_meta_topic.topic == "t" and only_meta_topic.is_topic


def test_naive_timestamps_and_unknown_enums_are_refused():
    with pytest.raises(pydantic.ValidationError, match="timezone"):
        Message.model_validate({**SEED, "timestamp": "2026-01-01T00:00:00"})
    with pytest.raises(pydantic.ValidationError, match="priority"):
        Message.model_validate({**SEED, "metadata": {"priority": "urgent"}})


def test_subscription_filters_match_type_and_priority():
    sub = Subscription(agent="a", topic="t", types=["command"], priorities=["high"])
    assert sub.matches("command", "high")
    assert not sub.matches("event", "high") and not sub.matches("command", "low")
    assert Subscription(agent="a", topic="t").matches("event", "low")


@given(
    st.dictionaries(
        st.sampled_from(
            ["from", "to", "topic", "type", "payload", "metadata", "version", "id", "correlationId"]
        ),
        st.one_of(
            st.text(max_size=10),
            st.integers(),
            st.none(),
            st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
        ),
    )
)
def test_any_input_either_validates_or_raises_a_validation_error(data):
    try:
        Message.model_validate(data)
    except pydantic.ValidationError:
        pass


def test_status_timestamps_keep_their_microseconds_and_older_whole_ms_stamps_still_read():
    status = MessageStatus.from_record(
        "m1",
        {
            "status": "delivered",
            "queued_at": "1764000000123.456",
            "delivered_at": "1764000000125",
            "attempts": "1",
        },
        now_ms=1764000001000,
    )
    assert status.timestamps["queued"].microsecond == 123456
    assert status.timestamps["delivered"].microsecond == 125000
    assert (
        MessageStatus.from_record("m2", {"status": "queued", "queued_at": "garbage"}, 0).timestamps
        == {}
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("ttl", True), ("ttl", "10"), ("encrypted", 1), ("encrypted", "yes"), ("max_retries", True)]
    + [("max_retries", 2.0), ("retry_count", "1")],
)
def test_metadata_numbers_and_booleans_are_not_coerced(field, value):
    """`true` is no ttl of 1 s, "10" no number and 1 no `true`: refused, naming the field."""
    with pytest.raises(pydantic.ValidationError, match=f"metadata.{field}"):
        Message.model_validate({**SEED, "metadata": {field: value}})
    good = {"ttl": 10, "encrypted": False, "max_retries": 2, "retry_count": 0}[field]
    assert (
        getattr(Message.model_validate({**SEED, "metadata": {field: good}}).metadata, field) == good
    )
