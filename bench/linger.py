"""`msgbus bench --only linger`: single sends with MESSAGE_BUS_SEND_LINGER_MS off and on,
beside raw Celery in the same run.

- drain: 8 producer threads of one process queue single sends, then a worker drains them
  (as the `drain` workload), against raw Celery's no-op drain;
- latency at 200 msg/s, send -> in inbox (8 producers at 25/s each, paced), against raw
  Celery's send -> task start paced the same way;
- idle: one message alone, the caller's wait for `send_message` and send -> in inbox,
  with nothing else in flight.

Off, on and raw take turns, so a machine that speeds up or slows down moves them alike.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from bench import raw_app as raw
from bench import workloads as w
from bench.harness import QUEUES, Bench, percentile, summary, wait_until
from bench.raw_app import app as raw_app

PRODUCERS = 8
LINGER_MS = 5.0  # the setting measured as "on"
LATENCY_RATE = 200.0
SETTING = "MESSAGE_BUS_SEND_LINGER_MS"


def run(b: Bench, n: int, reps: int, seconds: float, probes: int) -> dict[str, Any]:
    drains: dict[str, list[float]] = {"raw": [], "off": [], "on": []}
    tasks: dict[str, list[int]] = {"off": [], "on": []}
    lat: dict[str, list[float]] = {"raw": [], "off": [], "on": []}
    idle: dict[str, dict[str, list[float]]] = {
        side: {"send": [], "inbox": []} for side in ("off", "on")
    }
    if n >= 1000:  # warm-up (not for --smoke's tiny counts)
        w.raw_drain(b, 200)
        linger_drain(b, 200, 0.0)
    for _ in range(reps):
        drains["raw"].append(w.raw_drain(b, n))
        for side, ms in (("off", 0.0), ("on", LINGER_MS)):
            rate, queued = linger_drain(b, n, ms)
            drains[side].append(rate)
            tasks[side].append(queued)
    for _ in range(max(1, reps // 2)):
        lat["raw"] += raw_latency(b, LATENCY_RATE, seconds)
        for side, ms in (("off", 0.0), ("on", LINGER_MS)):
            paced, send, inbox = bus_latency(b, LATENCY_RATE, seconds, probes, ms)
            lat[side] += paced
            idle[side]["send"] += send
            idle[side]["inbox"] += inbox
    med = {side: summary(samples)["median"] for side, samples in drains.items()}
    p99 = {side: percentile(samples, 99) for side, samples in lat.items()}
    out: dict[str, Any] = {
        "linger_ms": LINGER_MS,
        "producers": PRODUCERS,
        "drain_msgs_per_s": {side: summary(samples) for side, samples in drains.items()},
        "messages_per_task": {
            side: round(n / summary([float(t) for t in counts])["median"], 2)
            for side, counts in tasks.items()
        },
        "drain_ratio_off": round(med["off"] / med["raw"], 3),
        "latency_200": {side: _pcts(samples) for side, samples in lat.items()},
        "latency_p99_on_to_off_200": round(p99["on"] / max(p99["off"], 1e-6), 3),
        "latency_p99_on_to_raw_200": round(p99["on"] / max(p99["raw"], 1e-6), 3),
        "idle": {
            side: {"send": _pcts(v["send"]), "send_to_inbox": _pcts(v["inbox"])}
            for side, v in idle.items()
        },
    }
    return {"linger": out, "linger_drain_ratio": round(med["on"] / med["raw"], 3)}


def _with_linger(b: Bench, ms: float) -> Any:
    b.env[SETTING] = f"{ms:g}"
    try:
        return b.bus()
    finally:
        b.env.pop(SETTING)


def _producers(count: int, fn: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=fn, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def linger_drain(b: Bench, n: int, ms: float) -> tuple[float, int]:
    """msgs/s of the drain, and how many tasks carried the `n` messages."""
    bus, reader = _with_linger(b, ms), f"linger-{uuid.uuid4().hex[:6]}"
    per = n // PRODUCERS

    def produce(k: int) -> None:
        for i in range(per):
            bus.send_message({"from": f"bench-sender-{k}", "to": reader, "payload": {"i": i}})

    _producers(PRODUCERS, produce)
    queued = b.queue_state("bus.normal")[0]
    return w._drain(b, bus, reader, per * PRODUCERS), queued


def _paced_producers(rate: float, seconds: float, send: Callable[[int, int], None]) -> None:
    """PRODUCERS threads sharing `rate`, each paced on its own clock, offset evenly."""
    each = rate / PRODUCERS
    count = max(1, int(each * seconds))
    start = time.monotonic()

    def produce(k: int) -> None:
        for i in range(count):
            delay = start + (i + k / PRODUCERS) / each - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            send(k, i)

    _producers(PRODUCERS, produce)


def bus_latency(
    b: Bench, rate: float, seconds: float, probes: int, ms: float
) -> tuple[list[float], list[float], list[float]]:
    """Send -> in inbox at `rate`; then `idle_latency` on the same worker."""
    bus, reader = _with_linger(b, ms), f"linger-lat-{uuid.uuid4().hex[:6]}"
    worker = b.start("workers.app", QUEUES, "bus")
    b.started_and_consuming(worker, "bus.normal")
    sent: dict[str, float] = {}
    lock = threading.Lock()

    def send(k: int, i: int) -> None:
        started = time.time()
        receipt = bus.send_message({"from": f"bench-sender-{k}", "to": reader, "payload": i})
        with lock:
            sent[receipt.id] = started

    _paced_producers(rate, seconds, send)
    wait_until(lambda: bus.runtime.store.inbox_depth(reader)[0] >= len(sent), 120, "latency run")
    latencies = w._delivery_latencies(bus, sent)
    sends, inbox = idle_latency(bus, probes)
    b.stop(worker)
    bus.close()
    b.fresh_redis()
    return latencies, sends, inbox


def raw_latency(b: Bench, rate: float, seconds: float) -> list[float]:
    raw.use(b.broker_url, b.queue_type)
    key = f"{b.prefix}raw-linger-lat-{uuid.uuid4().hex[:6]}"
    worker = b.start("bench.raw_app", "raw.q", "raw")
    b.started_and_consuming(worker, "raw.q")
    sent = [0]
    lock = threading.Lock()

    def send(k: int, i: int) -> None:
        raw_app.send_task("raw.stamp", args=[key, time.time()], queue="raw.q")
        with lock:
            sent[0] += 1

    _paced_producers(rate, seconds, send)
    client = b.redis()
    wait_until(lambda: client.llen(key) >= sent[0], 120, "raw latency run")
    b.stop(worker)
    return [float(v) for v in client.lrange(key, 0, -1)]


def idle_latency(bus: Any, probes: int) -> tuple[list[float], list[float]]:
    """One message at a time, nothing else in flight: how long `send_message` keeps its
    caller, and send -> in inbox."""
    reader = f"linger-idle-{uuid.uuid4().hex[:6]}"
    sends: list[float] = []
    sent: dict[str, float] = {}
    for i in range(probes):
        started, t0 = time.time(), time.perf_counter()
        receipt = bus.send_message({"from": "bench-idle", "to": reader, "payload": i})
        sends.append(time.perf_counter() - t0)
        sent[receipt.id] = started
        wait_until(lambda i=i: bus.runtime.store.inbox_depth(reader)[0] > i, 60, "idle message")
        time.sleep(0.02)  # the next one alone too
    return sends, w._delivery_latencies(bus, sent)


def _pcts(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 50) * 1000, 2),
        "p99_ms": round(percentile(values, 99) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
    }
