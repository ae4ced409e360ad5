"""No one Redis call carries or returns an unbounded amount of message bytes: Redis runs a
script or builds a reply alone, and every other client waits (one ADMIT of a 140 MB batch
held Redis for 2.3 s, past the other clients' socket timeouts).

- A large batch is admitted in parts of at most MAX_ADMIT_BYTES, still all or nothing: a
  refusal in a later part takes the earlier ones back.
- A read leases fewer messages than asked for once their bodies reach MAX_REPLY_BYTES.

The bounds are lowered here so that small messages reach them."""

from __future__ import annotations

import pytest

from bus import admission, scripts, store
from bus.errors import ValidationError
from tests.support.env import audit_entries
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

PART_BYTES = 64 * 1024
PAD = "x" * 10_000  # ~10 KiB a message: six or so to a part


@pytest.fixture
def parts(monkeypatch, bus):
    """The wire bytes of each ADMIT call the bus makes."""
    monkeypatch.setattr(admission, "MAX_ADMIT_BYTES", PART_BYTES)
    seen: list[int] = []
    runner = bus.runtime.admission.scripts
    call = runner.call

    def spy(script, keys, args, **kwargs):
        if script is scripts.ADMIT:
            seen.append(sum(len(a) for a in args if isinstance(a, str) and a.startswith("{")))
        return call(script, keys, args, **kwargs)

    monkeypatch.setattr(runner, "call", spy)
    return seen


def batch(sender, reader, n, **extra):
    return [{"from": sender, "to": reader, "payload": f"{i:02d}{PAD}", **extra} for i in range(n)]


def test_a_large_batch_is_admitted_in_bounded_parts_and_arrives_whole(bus, agents, parts):
    sender, reader = agents("s"), agents("r")
    receipts = bus.send_batch(batch(sender, reader, 30))
    assert {r.status.value for r in receipts} == {"queued"}
    assert len(parts) >= 4 and max(parts) <= PART_BYTES, parts
    got: list = []
    wait_for(
        lambda: got.extend(bus.read(reader, limit=100, wait=0.5)) or len(got) >= 30, 30, "all 30"
    )
    assert sorted(m.payload[:2] for m in got) == [f"{i:02d}" for i in range(30)]


def test_a_refusal_in_a_later_part_takes_the_earlier_parts_back(bus, agents, parts):
    sender, other, reader = agents("s"), agents("other"), agents("r")
    taken = bus.send_message({"from": other, "to": reader, "payload": 0}).id
    messages = batch(sender, reader, 30)
    messages[-1]["id"] = taken  # another sender's id: the whole batch is refused
    with pytest.raises(ValidationError, match=taken):
        bus.send_batch(messages)
    assert len(parts) >= 4  # the earlier parts were admitted, then taken back
    assert bus.history(sender) == []
    assert bus.runtime.store.redis.zcard(bus.runtime.store.keys.unconfirmed) == 0
    sends = [e for e in audit_entries(bus) if e.get("agent") == sender]
    assert len(sends) >= 29 and {e["outcome"] for e in sends} <= {"ok", "failed"}
    failed = {e["message_id"] for e in sends if e["outcome"] == "failed"}
    assert len(failed) >= 24  # every message of the parts taken back says so
    # The control: the same batch without the borrowed id goes through, in parts.
    assert len(bus.send_batch(messages[:-1])) == 29
    assert len(bus.history(sender, limit=100)) == 29


def test_a_dedup_key_repeated_far_apart_in_a_batch_stays_in_one_part(bus, agents, parts):
    """ADMIT tells a repeat within its call from an earlier send in flight; split across
    parts, the repeat would wait out the first one's lease as if another send held it."""
    sender, reader = agents("s"), agents("r")
    messages = batch(sender, reader, 30)
    messages[0]["metadata"] = messages[29]["metadata"] = {"dedup_key": "twice"}
    receipts = bus.send_batch(messages)
    assert (receipts[29].status.value, receipts[29].duplicate_of) == ("duplicate", receipts[0].id)
    assert [r.status.value for r in receipts[:29]] == ["queued"] * 29
    assert len(parts) >= 4


def test_a_read_stops_leasing_once_the_bodies_reach_the_reply_bound(monkeypatch, bus, agents):
    monkeypatch.setattr(store, "MAX_REPLY_BYTES", PART_BYTES)
    sender, reader = agents("s"), agents("r")
    depth = bus.runtime.store.inbox_depths
    bus.send_batch(batch(sender, reader, 20))
    wait_for(lambda: depth([reader])[reader] == 20, 30, "the batch delivered")
    first = bus.read(reader, limit=20)
    assert 1 <= len(first) < 20 and sum(len(m.payload) for m in first) <= PART_BYTES + 10_100
    rest = bus.read(reader, limit=20) + bus.read(reader, limit=20) + bus.read(reader, limit=20)
    assert sorted(m.payload[:2] for m in first + rest) == [f"{i:02d}" for i in range(20)]
    bus.ack(reader, [m.id for m in first + rest])
    # One message larger than the bound still comes, alone.
    monkeypatch.setattr(store, "MAX_REPLY_BYTES", 100)
    bus.send_batch(batch(sender, reader, 2))
    wait_for(lambda: depth([reader])[reader] == 2, 30, "the two delivered")
    assert len(bus.read(reader, limit=20)) == 1
