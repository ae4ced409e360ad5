"""The linger collector (bus.linger) on its own: who is grouped with whom, who waits, and
who gets which error. Its publish is a recording function here; the real broker path is
in tests/integration/test_linger.py."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from bus.errors import BusUnavailable, LimitExceeded
from bus.linger import Linger
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(20)

LONG = 60.0  # a linger no test may sit out: a test that waits for it times out instead


class Recorder:
    """Records each published group; groups holding one of `hold` wait until released,
    groups holding `fail` raise."""

    def __init__(self, *hold: Any, fail: Any = None) -> None:
        self.groups: list[list[Any]] = []
        self.hold, self.fail = set(hold), fail
        self.release = threading.Event()
        self.held: list[Any] = []
        self.holding = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, items: list[Any]) -> None:
        if self.hold & set(items):
            with self.lock:
                self.held += items
            self.holding.set()
            assert self.release.wait(10)
        if self.fail in items:
            raise BusUnavailable("broker down", component="broker")
        with self.lock:
            self.groups.append(list(items))


def send_in_thread(linger: Linger[Any], queue: str, item: Any, results: dict[Any, Any]):
    def run() -> None:
        try:
            linger.send(queue, item)
            results[item] = "ok"
        except Exception as exc:  # noqa: BLE001 - what the caller got, asserted below
            results[item] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_sender_alone_publishes_at_once_without_sitting_out_the_linger():
    publish = Recorder()
    linger = Linger(publish, wait=LONG, max_items=100, max_size=10**6)
    for i in range(3):
        linger.send("bus.normal", i)
    assert publish.groups == [[0], [1], [2]]


def test_sends_arriving_while_a_publish_is_in_flight_go_together_in_the_next_one():
    publish = Recorder("first")
    linger = Linger(publish, wait=LONG, max_items=4, max_size=10**6)
    results: dict[Any, Any] = {}
    threads = [send_in_thread(linger, "bus.normal", "first", results)]
    assert publish.holding.wait(5)
    threads += [send_in_thread(linger, "bus.normal", i, results) for i in range(4)]
    # Four make a full group: it goes without waiting for the first publish.
    wait_for(lambda: len(publish.groups) == 1, 5, "the full group published")
    assert sorted(publish.groups[0]) == [0, 1, 2, 3]
    assert "first" not in results, "the first caller returned before its confirm"
    publish.release.set()
    for t in threads:
        t.join(5)
    assert results == {"first": "ok", 0: "ok", 1: "ok", 2: "ok", 3: "ok"}
    assert publish.groups[1] == ["first"]


def test_the_leader_publishes_its_group_once_the_publish_ahead_of_it_is_confirmed():
    publish = Recorder("first")
    linger = Linger(publish, wait=LONG, max_items=100, max_size=10**6)
    results: dict[Any, Any] = {}
    threads = [send_in_thread(linger, "bus.normal", "first", results)]
    assert publish.holding.wait(5)
    threads += [send_in_thread(linger, "bus.normal", i, results) for i in range(3)]
    wait_for(lambda: linger.waiting("bus.normal") == 3, 5, "three waiting")
    assert publish.groups == []
    publish.release.set()
    for t in threads:
        t.join(5)
    assert publish.groups[0] == ["first"]
    assert sorted(publish.groups[1]) == [0, 1, 2]
    assert set(results.values()) == {"ok"}


def test_a_failed_publish_fails_exactly_the_callers_of_its_group_each_with_its_own_error():
    publish = Recorder("first", fail="bad")
    linger = Linger(publish, wait=LONG, max_items=3, max_size=10**6)
    results: dict[Any, Any] = {}
    threads = [send_in_thread(linger, "bus.normal", "first", results)]
    assert publish.holding.wait(5)
    threads += [send_in_thread(linger, "bus.normal", x, results) for x in ("bad", "b", "c")]
    for t in threads[1:]:
        t.join(5)
    errors = [results[x] for x in ("bad", "b", "c")]
    assert all(isinstance(e, BusUnavailable) and e.message == "broker down" for e in errors)
    assert len({id(e) for e in errors}) == 3
    publish.release.set()
    threads[0].join(5)
    assert results["first"] == "ok"
    linger.send("bus.normal", "after")  # the next group is not tainted
    assert publish.groups == [["first"], ["after"]]


def test_a_group_closes_at_its_size_bound():
    publish = Recorder("first")
    linger = Linger(publish, wait=LONG, max_items=100, max_size=10)
    results: dict[Any, Any] = {}
    threads = [send_in_thread(linger, "bus.normal", "first", results)]
    assert publish.holding.wait(5)
    big = threading.Thread(target=linger.send, args=("bus.normal", "big", 10))
    big.start()
    big.join(5)
    assert publish.groups == [["big"]]
    publish.release.set()
    threads[0].join(5)


def test_queues_never_share_a_group():
    publish = Recorder("h0", "n0")
    linger = Linger(publish, wait=LONG, max_items=2, max_size=10**6)
    results: dict[Any, Any] = {}
    threads = [
        send_in_thread(linger, q, x, results) for q, x in (("bus.high", "h0"), ("bus.normal", "n0"))
    ]
    wait_for(lambda: len(publish.held) == 2, 5, "a publish in flight on each queue")
    items = [("bus.high", "h1"), ("bus.normal", "n1"), ("bus.high", "h2"), ("bus.normal", "n2")]
    threads += [send_in_thread(linger, q, x, results) for q, x in items]
    wait_for(lambda: len(publish.groups) == 2, 5, "two full groups")
    assert sorted(sorted(g) for g in publish.groups) == [["h1", "h2"], ["n1", "n2"]]
    publish.release.set()
    for t in threads:
        t.join(5)


def test_a_send_on_an_event_loop_thread_does_not_wait_for_others():
    publish = Recorder("first")
    linger = Linger(publish, wait=LONG, max_items=100, max_size=10**6)
    results: dict[Any, Any] = {}
    first = send_in_thread(linger, "bus.normal", "first", results)
    assert publish.holding.wait(5)

    async def on_the_loop() -> None:
        linger.send("bus.normal", "from-the-loop")

    asyncio.run(on_the_loop())
    assert publish.groups == [["from-the-loop"]]
    publish.release.set()
    first.join(5)


def test_an_error_keeps_its_type_and_fields():
    def refuse(items: list[Any]) -> None:
        raise LimitExceeded("queue full", limit="queue_max_length")

    linger = Linger(refuse, wait=LONG, max_items=10, max_size=10**6)
    with pytest.raises(LimitExceeded, match="queue full") as info:
        linger.send("bus.normal", 1)
    assert info.value.fields == {"limit": "queue_max_length"}
