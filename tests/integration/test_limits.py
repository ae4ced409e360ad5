"""Every limit and every malformed input gets a clear error and writes nothing."""

from __future__ import annotations

import pytest
import redis

from bus.errors import BusUnavailable, InboxFull, LimitExceeded, ValidationError
from bus.guard import AUDIT_FIELD_CHARS
from bus.topology import PRIORITY_QUEUES
from tests.support.env import audit_entries
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


def snapshot(env):
    """Keys in this bus's Redis keyspace and messages waiting in its queues."""
    client = redis.Redis.from_url(env.settings().redis_url, decode_responses=True)
    keys = sorted(client.scan_iter(match=f"{env.prefix}*"))
    client.close()
    bus = env.bus()
    depths = {}
    with bus.runtime.broker.connection() as conn:
        bus.runtime.broker.ensure_topology()
        channel = conn.channel()
        for queue in PRIORITY_QUEUES:
            depths[queue] = channel.queue_declare(queue, passive=True).message_count
        channel.close()
    bus.close()
    return keys, depths


@pytest.fixture
def quiet_env(fresh_env):
    """A bus with no worker, so anything sent would stay visible in its queues."""
    bus = fresh_env.bus()
    bus.runtime.broker.ensure_topology()
    return fresh_env, bus


BAD_MESSAGES = [
    ({"from": "Alice", "to": "bob"}, "from: agent id 'Alice' must match"),
    ({"from": "alice", "to": "-bob"}, "to: agent id '-bob' must match"),
    ({"from": "alice", "to": "b" * 65}, "must match"),
    ({"from": "alice", "topic": "Bad Topic"}, "topic: topic 'Bad Topic' must match"),
    ({"from": "alice", "to": "bob", "type": "gossip"}, "type: Input should be 'request'"),
    ({"from": "alice", "to": "bob", "metadata": {"priority": "urgent"}}, "metadata.priority"),
    ({"from": "alice", "to": "bob", "metadata": {"ttl": -1}}, "metadata.ttl"),
    ({"from": "alice"}, "no address"),
    ({"to": "bob"}, "from: Field required"),
    ({"from": "alice", "to": "bob", "version": "2.0"}, "version '2.0' is not supported"),
    ("not an object", "expected a JSON object"),
]


@pytest.mark.parametrize(("message", "expected"), BAD_MESSAGES)
def test_malformed_message_is_refused_with_a_clear_error_and_nothing_written(
    quiet_env, message, expected
):
    env, bus = quiet_env
    before = snapshot(env)
    with pytest.raises(ValidationError) as excinfo:
        bus.send_message(message)
    assert expected in str(excinfo.value)
    assert snapshot(env) == before


def test_oversize_payload_is_refused_naming_the_limit(quiet_env):
    env, bus = quiet_env
    before = snapshot(env)
    with pytest.raises(LimitExceeded) as excinfo:
        bus.send_message({"from": "alice", "to": "bob", "payload": "x" * (1024 * 1024 + 1)})
    assert "MESSAGE_BUS_MAX_PAYLOAD_BYTES" in str(excinfo.value)
    assert excinfo.value.fields["limit"] == "max_payload_bytes"
    assert snapshot(env) == before


def test_batch_over_the_limit_is_refused_whole(quiet_env):
    env, bus = quiet_env
    before = snapshot(env)
    with pytest.raises(LimitExceeded, match="limit is 500"):
        bus.send_batch([{"from": "alice", "to": "bob", "payload": i} for i in range(501)])
    assert snapshot(env) == before


def test_one_bad_message_in_a_batch_sends_none_of_it(quiet_env):
    env, bus = quiet_env
    before = snapshot(env)
    batch = [{"from": "alice", "to": "bob", "payload": i} for i in range(10)]
    batch[7]["to"] = "Not Valid"
    with pytest.raises(ValidationError, match=r"messages\[7\]\.to"):
        bus.send_batch(batch)
    assert snapshot(env) == before


def test_subscription_over_the_topic_limit_is_refused_whole(quiet_env):
    env, bus = quiet_env
    bus.subscribe("carol", [f"t{i}" for i in range(95)])
    before = snapshot(env)
    with pytest.raises(LimitExceeded, match="limit of 100"):
        bus.subscribe("carol", [f"u{i}" for i in range(10)])
    with pytest.raises(LimitExceeded, match="the limit is 100"):
        bus.subscribe("dave", [f"v{i}" for i in range(101)])
    assert snapshot(env) == before
    assert len(bus.subscriptions("carol")) == 95
    assert "dave" not in [a.id for a in bus.agents()]


def test_a_subscription_registers_its_agent_and_audits_each_topic_once_in_one_entry(quiet_env):
    env, bus = quiet_env
    bus.subscribe("erin", ["news", "tasks/new", "news"])
    [erin] = [a for a in bus.agents() if a.id == "erin"]
    assert erin.last_seen is not None and erin.last_seen >= erin.registered_at
    audit = audit_entries(bus)
    subscribed = [(e["target"], e["outcome"]) for e in audit if e["action"] == "subscribe"]
    # One entry per call (a churn of subscriptions cannot flush the trail), each topic once.
    assert subscribed == [("news,tasks/new", "ok")]


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda b: b.read("Bad Agent"), "invalid agent id"),
        (lambda b: b.read("ok", limit=0), "limit must be"),
        (lambda b: b.read("ok", wait=61), "wait must be 0..60"),
        (lambda b: b.history("ok", type="gossip"), "unknown type 'gossip'"),
        (lambda b: b.subscribe("ok", ["Bad Topic"]), "topic"),
        (lambda b: b.subscribe("ok", ["t"], types=["gossip"]), "types"),
        (lambda b: b.subscribe("ok", ["t"], priorities=["urgent"]), "priorities"),
        (lambda b: b.subscribe("ok", []), "at least one topic"),
    ],
)
def test_bad_arguments_are_refused_clearly(quiet_env, call, expected):
    env, bus = quiet_env
    with pytest.raises(ValidationError, match=expected):
        call(bus)


def test_an_audit_entry_is_bounded_whatever_the_call_names(quiet_env):
    """The stream is capped in entries; each entry's values are cut, so a call naming a
    hundred long topics writes one short entry that says how much it left out."""
    env, bus = quiet_env
    topics = [f"t{i:03d}/" + "x" * 120 for i in range(100)]
    bus.unsubscribe("frank", topics)
    bus.subscribe("frank", ["short"])
    entries = [e for e in audit_entries(bus) if e["agent"] == "frank"]
    [gone] = [e for e in entries if e["action"] == "unsubscribe"]
    assert len(gone["target"]) <= AUDIT_FIELD_CHARS
    assert gone["target"].startswith(topics[0]) and gone["target"].endswith(" chars)")
    assert all(len(v) <= AUDIT_FIELD_CHARS for e in entries for v in e.values())
    # the positive control: a short target is kept whole
    assert [e["target"] for e in entries if e["action"] == "subscribe"] == ["short"]


def test_a_senders_share_of_an_inbox_counts_its_mail_on_the_way(fresh_env, agents):
    """Only what an inbox held counted toward a sender's share: sends admitted before the
    worker delivered them (a burst, two batches, a batch in parts) let one sender fill all
    of another agent's inbox, and everyone else was refused."""
    fresh_env.overrides["MESSAGE_BUS_INBOX_MAX"] = "8"  # a share of 4
    bus = fresh_env.bus()
    flooder, other, inbox = agents("flooder"), agents("other"), agents("inbox")
    bus.send_batch([{"from": flooder, "to": inbox, "payload": n} for n in range(3)])
    with pytest.raises(InboxFull, match="its share"):  # no worker yet: all still on the way
        bus.send_batch([{"from": flooder, "to": inbox, "payload": n} for n in range(2)])
    bus.send_message({"from": flooder, "to": inbox, "payload": "fourth"})  # up to its share
    with pytest.raises(InboxFull, match="its share"):
        bus.send_message({"from": flooder, "to": inbox, "payload": "fifth"})
    for n in range(4):  # the control: room for the others
        bus.send_message({"from": other, "to": inbox, "payload": n})
    fresh_env.start_worker()
    wait_for(lambda: sum(bus.runtime.store.inbox_depth(inbox)) == 8, 30, "all 8 delivered")
    got = bus.read(inbox, limit=10)
    assert sorted(m.sender for m in got) == sorted([flooder] * 4 + [other] * 4)
    bus.ack(inbox, [next(m.id for m in got if m.sender == flooder)])
    bus.send_message({"from": flooder, "to": inbox, "payload": "again"})  # room again


def test_a_send_refused_after_its_admission_gives_its_place_in_the_share_back(fresh_env, agents):
    fresh_env.overrides["MESSAGE_BUS_INBOX_MAX"] = "4"  # a share of 2
    bus = fresh_env.bus()
    sender, inbox = agents("sender"), agents("inbox")
    publish = bus.runtime.broker.publish

    def refused(*args, **kwargs):
        raise BusUnavailable("the broker is away (test)")

    bus.runtime.broker.publish = refused
    for n in range(3):
        with pytest.raises(BusUnavailable):
            bus.send_message({"from": sender, "to": inbox, "payload": n})
    bus.runtime.broker.publish = publish
    for n in range(2):  # its whole share: nothing of the refused ones is held
        bus.send_message({"from": sender, "to": inbox, "payload": n})
    with pytest.raises(InboxFull, match="its share"):  # the control: the share holds
        bus.send_message({"from": sender, "to": inbox, "payload": "third"})
