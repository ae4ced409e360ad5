"""A batch of direct messages is delivered one script per inbox (DELIVER_INBOX); these
tests hold it to what delivering the same messages one by one (DELIVER) leaves behind:
the same inbox order, history, statuses and counts, and no second copy on a redelivery."""

from __future__ import annotations

from typing import Any

import pytest

from bus.envelope import Envelope
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

HISTORY_LIMIT = 10


@pytest.fixture
def small_bus(fresh_env: Any) -> Any:
    bus = fresh_env.bus(history_limit=HISTORY_LIMIT, sender_share=0.5, inbox_max=1000)
    yield bus
    bus.close()


def wires(bus: Any, plan: list[tuple[str, str, int]]) -> list[str]:
    """Signed wires for (sender, recipient, payload), with the priority alternating."""
    out = []
    for i, (sender, to, payload) in enumerate(plan):
        priority = "high" if i % 3 == 0 else "normal"
        prepared = bus.sender.prepare(
            {"from": sender, "to": to, "payload": payload, "metadata": {"priority": priority}}
        )
        out.append(prepared.record.wire)
    return out


def one_by_one(bus: Any, texts: list[str]) -> None:
    for text in texts:
        bus.runtime.deliverer.deliver(Envelope.parse(text), 1)


def seen(bus: Any, agent: str) -> dict[str, Any]:
    """What the agent can see: its history (as a set: entries sent in the same ms tie) and its inbox in read order."""
    history = sorted((m.payload for m in bus.history(agent, limit=HISTORY_LIMIT)), key=str)
    inbox = [m.payload for m in bus.read(agent, limit=100)]
    return {"history": history, "inbox": inbox}


def counted_bytes(bus: Any, agent: str) -> tuple[int, int]:
    """The history's byte count as Redis keeps it (what HISTORY_MAX_BYTES is held to)
    against the length of what it holds."""
    r, k = bus.runtime.redis, bus.runtime.keys
    members = r.zrange(k.history(agent), 0, -1)
    return int(r.get(k.history_bytes(agent)) or 0), sum(len(m) for m in members)


@pytest.mark.parametrize("flood_first", [True, False])
def test_a_batch_leaves_what_one_by_one_delivery_leaves(small_bus, agents, flood_first):
    flooder, other = agents("flooder"), agents("other")
    batched, single = agents("batched"), agents("single")
    flood = [(flooder, f"f{i}") for i in range(30)]
    calm = [(other, f"o{i}") for i in range(5)]
    first, then = (flood, calm) if flood_first else (calm, flood)

    def signed(to: str) -> list[str]:
        # The two senders' mail a millisecond apart: "oldest" is then no tie between them.
        early = wires(small_bus, [(s, to, p) for s, p in first])
        clock, sent_at = small_bus.runtime.clock, small_bus.runtime.clock.now_ms()
        wait_for(lambda: clock.now_ms() > sent_at, 1, "the next millisecond")
        return early + wires(small_bus, [(s, to, p) for s, p in then])

    newly, refused = small_bus.runtime.deliverer.deliver_many(signed(batched))
    one_by_one(small_bus, signed(single))

    assert (newly, refused) == (35, [])
    for agent in (batched, single):
        history = seen(small_bus, agent)["history"]
        # Full, and the flooder's mail did not push out the other sender's (the history's
        # fairness). Which of the flooder's survive may tie: sent in the same ms.
        assert len(history) == HISTORY_LIMIT
        assert [p for p in history if p.startswith("o")] == ["o0", "o1", "o2", "o3", "o4"]
        count, held = counted_bytes(small_bus, agent)
        assert count == held > 0
    assert seen(small_bus, batched)["inbox"] == seen(small_bus, single)["inbox"]


def test_a_redelivered_batch_adds_nothing_and_statuses_say_delivered(small_bus, agents):
    sender, reader, control = agents("sender"), agents("reader"), agents("control")
    texts = wires(small_bus, [(sender, reader, i) for i in range(8)])
    deliverer = small_bus.runtime.deliverer

    assert deliverer.deliver_many(texts) == (8, [])
    before = counted_bytes(small_bus, reader)
    assert deliverer.deliver_many(texts) == (0, [])  # the task came again (a worker died)

    assert counted_bytes(small_bus, reader) == before
    one_by_one(small_bus, wires(small_bus, [(sender, control, i) for i in range(8)]))
    got = seen(small_bus, reader)
    assert got == seen(small_bus, control) and sorted(got["inbox"]) == list(range(8))
    assert len(got["history"]) == 8
    for text in texts:
        status = small_bus.status(Envelope.parse(text).id)
        assert status.status.value in ("delivered", "read") and status.recipients == 1


def test_a_batch_whose_history_entries_outlived_their_records_counts_them_once(small_bus, agents):
    sender, reader = agents("sender"), agents("reader")
    texts = wires(small_bus, [(sender, reader, i) for i in range(6)])
    deliverer = small_bus.runtime.deliverer
    deliverer.deliver_many(texts)
    r, k = small_bus.runtime.redis, small_bus.runtime.keys
    # The delivered records expire (STATUS_RETENTION) while history may stay: a late
    # redelivery then finds its entries already in the history.
    r.delete(*[k.delivered(Envelope.parse(t).id) for t in texts[:3]])

    assert deliverer.deliver_many(texts) == (3, [])

    count, held = counted_bytes(small_bus, reader)
    assert count == held and len(r.zrange(k.history(reader), 0, -1)) == 6


def test_a_batch_with_an_answer_in_it_keeps_each_inbox_in_sending_order(small_bus, agents):
    """An answer (a correlated message) needs DELIVER's reply key: the batch then goes one
    script per message, in order, and leaves what one by one delivery leaves."""
    answerer, asker, control = agents("answerer"), agents("asker"), agents("control")
    texts = {
        who: wires(small_bus, [(answerer, who, i) for i in range(4)]) for who in (asker, control)
    }
    questions = {}
    for who, batch in texts.items():
        asked = small_bus.sender.prepare({"from": who, "to": answerer, "type": "request"})
        assert small_bus.runtime.deliverer.deliver_many([asked.record.wire]) == (1, [])
        questions[who] = asked.message.id
        answer = small_bus.sender.prepare(
            {
                "from": answerer,
                "to": who,
                "payload": "answer",
                "type": "response",
                "correlation_id": asked.message.id,
            }
        )
        batch.insert(2, answer.record.wire)

    assert small_bus.runtime.deliverer.deliver_many(texts[asker]) == (5, [])
    one_by_one(small_bus, texts[control])

    got = seen(small_bus, asker)
    assert got == seen(small_bus, control) and len(got["inbox"]) == 5
    answer_id = Envelope.parse(texts[asker][2]).id
    assert small_bus.runtime.store.reply_for(asker, questions[asker]) == answer_id
