"""A worker SIGKILLed in the middle of a burst loses nothing (at-least-once)."""

from __future__ import annotations

import collections
import signal

import pytest

from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(300)

BURST = 2000


def test_worker_killed_mid_burst_then_restarted_delivers_every_message(fresh_env, agents):
    bus = fresh_env.bus()
    sender, reader = agents("s"), agents("r")
    receipts = bus.send_batch(
        [{"from": sender, "to": reader, "payload": i} for i in range(BURST // 4)]
    )
    for i in range(BURST // 4, BURST):
        receipts.append(bus.send_message({"from": sender, "to": reader, "payload": i}))
    sent = {r.id for r in receipts}
    assert len(sent) == BURST

    def delivered_count():
        return bus.runtime.store.inbox_depth(reader)[0]

    # The burst waits in RabbitMQ; the worker starts on it and is killed part-way.
    worker = fresh_env.start_worker(concurrency=4)
    wait_for(lambda: delivered_count() >= 200, 60, "the burst to be under way")
    worker.kill(signal.SIGKILL)
    at_kill = delivered_count()
    fresh_env.start_worker(concurrency=4)

    seen: list[str] = []

    def drain():
        for m in bus.read(reader, limit=500, wait=0.5):
            seen.append(m.id)
        bus.ack(reader, seen[-500:])
        return set(seen) >= sent

    wait_for(drain, 120, f"all {BURST} messages (killed at {at_kill})", interval=0)
    counts = collections.Counter(seen)
    duplicates = sum(n - 1 for n in counts.values())
    lost = sent - set(seen)
    print(f"\nkilled at {at_kill}/{BURST} delivered; lost={len(lost)} duplicates={duplicates}")
    assert lost == set()
    assert set(seen) == sent
    assert 0 < at_kill < BURST, "the kill must land mid-burst for this test to mean anything"
