"""The workloads of `msgbus bench`, each measured beside its raw-Celery baseline."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import httpx2
import orjson
from kombu import Connection, Exchange, Producer, Queue
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from bench import raw_app as raw
from bench.harness import QUEUES, Bench, percentile, rss_mb, send_then_read, wait_until
from bench.raw_app import app as raw_app


def _queue_bus_sends(
    bus: Any, sender: str, reader: str, n: int, priority: str = "normal", payload: Any = None
) -> list[str]:
    return [
        bus.send_message(
            {
                "from": sender,
                "to": reader,
                "payload": payload or {"i": i},
                "metadata": {"priority": priority},
            }
        ).id
        for i in range(n)
    ]


def bus_drain(b: Bench, n: int) -> float:
    bus, reader = b.bus(), f"drain-{uuid.uuid4().hex[:6]}"
    _queue_bus_sends(bus, "bench-sender", reader, n)
    return _drain(b, bus, reader, n)


def _drain(b: Bench, bus: Any, reader: str, n: int) -> float:
    """Starts a worker on the queued messages; msgs/s until all are in the inbox."""
    worker = b.start("workers.app", QUEUES, "bus")
    b.started_and_consuming(worker, "bus.normal")
    t0 = time.monotonic()
    t1 = wait_until(
        lambda: bus.runtime.store.inbox_depth(reader)[0] >= n, 600, "bus drain", interval=0.02
    )
    b.stop(worker)
    bus.close()
    b.fresh_redis()  # the next run starts from an empty keyspace and a compact AOF
    return n / (t1 - t0)


def _raw_publish(
    n: int, queue: str = "raw.q", task: str = "raw.noop", args: list[Any] | None = None
) -> None:
    for _ in range(n):
        raw_app.send_task(task, args=args or [], queue=queue)


def raw_drain(b: Bench, n: int) -> float:
    raw.use(b.broker_url, b.queue_type)
    _raw_publish(n)
    worker = b.start("bench.raw_app", "raw.q", "raw")
    b.started_and_consuming(worker, "raw.q")
    t0 = time.monotonic()
    t1 = wait_until(lambda: b.queue_state("raw.q")[0] == 0, 600, "raw drain", interval=0.02)
    b.stop(worker)
    return n / (t1 - t0)


def bus_batch_drain(b: Bench, n: int) -> float:
    bus, reader = b.bus(), f"batch-{uuid.uuid4().hex[:6]}"
    for start in range(0, n, 100):
        bus.send_batch(
            [
                {"from": "bench-sender", "to": reader, "payload": {"i": i}}
                for i in range(start, min(start + 100, n))
            ]
        )
    return _drain(b, bus, reader, n)


def producer(b: Bench, n: int, threads: int) -> float:
    bus, reader = b.bus(), f"prod-{uuid.uuid4().hex[:6]}"
    per = n // threads

    def send() -> None:
        _queue_bus_sends(bus, "bench-sender", reader, per)

    workers = [threading.Thread(target=send) for _ in range(threads)]
    t0 = time.monotonic()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    rate = per * threads / (time.monotonic() - t0)
    bus.close()
    return rate


def kombu_publish(b: Bench, n: int, confirm: bool) -> float:
    options = {"confirm_publish": True} if confirm else {}
    with Connection(b.broker_url, transport_options=options) as conn:
        channel = conn.channel()
        exchange = Exchange("raw.bench", "direct", durable=True)
        queue = Queue("raw.sink", exchange, routing_key="raw.sink", durable=True)(channel)
        queue.declare()
        producer = Producer(channel, exchange=exchange)
        body = orjson.dumps({"payload": {"i": 0}})
        t0 = time.monotonic()
        for _ in range(n):  # persistent, to a durable queue: what the bus publishes
            producer.publish(body, routing_key="raw.sink", delivery_mode=2)
        rate = n / (time.monotonic() - t0)
        queue.purge()
        return rate


def _paced(rate: float, seconds: float, fn: Any) -> None:
    start = time.monotonic()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        fn()


def _timed_send(bus: Any, sent: dict[str, float], message: dict[str, Any]) -> None:
    """Sends and notes when the send began (time.time(), as raw.stamp's senders do)."""
    started = time.time()
    sent[bus.send_message(message).id] = started


def bus_latency(b: Bench, rate: float, seconds: float) -> list[float]:
    bus, reader = b.bus(), f"lat-{uuid.uuid4().hex[:6]}"
    worker = b.start("workers.app", QUEUES, "bus")
    b.started_and_consuming(worker, "bus.normal")
    sent: dict[str, float] = {}
    _paced(
        rate,
        seconds,
        lambda: _timed_send(
            bus, sent, {"from": "bench-sender", "to": reader, "payload": {"i": len(sent)}}
        ),
    )
    wait_until(lambda: bus.runtime.store.inbox_depth(reader)[0] >= len(sent), 120, "latency run")
    b.stop(worker)
    latencies = _delivery_latencies(bus, sent)
    bus.close()
    return latencies


def _delivery_latencies(bus: Any, sent: dict[str, float]) -> list[float]:
    """From the start of each send to its `delivered_at` (the worker's clock, µs decimals),
    in seconds."""
    pipe = bus.runtime.redis.pipeline(transaction=False)
    for message_id in sent:
        pipe.hget(bus.runtime.keys.status(message_id), "delivered_at")
    return [
        float(delivered) / 1000 - started
        for started, delivered in zip(sent.values(), pipe.execute(), strict=True)
        if delivered
    ]


def raw_latency(b: Bench, rate: float, seconds: float) -> list[float]:
    raw.use(b.broker_url, b.queue_type)
    key = f"{b.prefix}raw-lat-{uuid.uuid4().hex[:6]}"
    worker = b.start("bench.raw_app", "raw.q", "raw")
    b.started_and_consuming(worker, "raw.q")
    count = int(rate * seconds)
    _paced(
        rate,
        seconds,
        lambda: raw_app.send_task("raw.stamp", args=[key, time.time()], queue="raw.q"),
    )
    client = b.redis()
    wait_until(lambda: client.llen(key) >= count, 120, "raw latency run")
    b.stop(worker)
    return [float(v) for v in client.lrange(key, 0, -1)]


def bus_priority(b: Bench, backlog: int, probes: int) -> list[float]:
    bus = b.bus()
    if backlog:
        _queue_bus_sends(bus, "bench-sender", f"low-{uuid.uuid4().hex[:6]}", backlog, "low")
    reader = f"crit-{uuid.uuid4().hex[:6]}"
    # The express worker first: the backlog starts draining only once both are up, so the
    # probes follow right behind and a fast machine does not drain it before they end.
    express = b.start(
        "workers.app", "bus.critical,bus.high", "express", env={"MESSAGE_BUS_EXPRESS_WORKER": "1"}
    )
    b.started_and_consuming(express, "bus.critical")
    worker = b.start("workers.app", QUEUES, "bus")
    b.started_and_consuming(worker, "bus.low")
    wait_until(lambda: b.consumers("bus.critical") >= 2, 60, "the express worker")
    sent: dict[str, float] = {}
    for i in range(probes):
        _timed_send(
            bus,
            sent,
            {
                "from": "bench-sender",
                "to": reader,
                "payload": {"i": i},
                "metadata": {"priority": "critical"},
            },
        )
        wait_until(lambda i=i: bus.runtime.store.inbox_depth(reader)[0] > i, 60, "critical message")
    waits = _delivery_latencies(bus, sent)
    left = b.queue_state("bus.low")[0]
    b.stop(worker)
    b.stop(express)
    bus.close()
    if backlog and left == 0:
        raise RuntimeError("the low backlog drained before the probes ended: raise --backlog")
    return waits


def raw_priority(b: Bench, backlog: int, probes: int) -> list[float]:
    raw.use(b.broker_url, b.queue_type)
    _raw_publish(backlog, queue="raw.low")
    key = f"{b.prefix}raw-prio-{uuid.uuid4().hex[:6]}"
    client = b.redis()
    express = b.start("bench.raw_app", "raw.critical", "raw-express", env={"RAW_EXPRESS": "1"})
    b.started_and_consuming(express, "raw.critical")
    worker = b.start("bench.raw_app", "raw.critical,raw.low", "raw")
    b.started_and_consuming(worker, "raw.low")
    wait_until(lambda: b.consumers("raw.critical") >= 2, 60, "the raw express worker")
    for i in range(probes):
        raw_app.send_task("raw.stamp", args=[key, time.time()], queue="raw.critical")
        wait_until(lambda i=i: client.llen(key) > i, 60, "raw critical task")
    b.stop(worker)
    b.stop(express)
    with Connection(b.broker_url) as conn:
        conn.channel().queue_purge("raw.low")
    return [float(v) for v in client.lrange(key, 0, -1)]


def footprint(b: Bench, n: int) -> dict[str, float]:
    bus, reader = b.bus(), f"foot-{uuid.uuid4().hex[:6]}"
    worker = b.start("workers.app", QUEUES, "bus")
    b.started_and_consuming(worker, "bus.normal")
    _queue_bus_sends(bus, "bench-sender", reader, 200)  # warm-up
    wait_until(lambda: bus.runtime.store.inbox_depth(reader)[0] >= 200, 60, "warm-up")
    before = rss_mb(worker.pid)
    sent = 200
    while sent < n:
        count = min(100, n - sent)
        bus.send_batch(
            [{"from": "bench-sender", "to": reader, "payload": {"i": i}} for i in range(count)]
        )
        sent += count
        if sent % 5000 == 0:  # keep the inbox bounded: ack as we go
            ids = [m.id for m in bus.read(reader, limit=500)]
            bus.ack(reader, ids)
    wait_until(lambda: b.queue_state("bus.normal")[0] == 0, 600, "footprint drain")
    time.sleep(1)
    after = rss_mb(worker.pid)
    b.stop(worker)
    # Redis bytes per history entry with 1 KiB payloads.
    hist_reader = f"mem-{uuid.uuid4().hex[:6]}"
    worker = b.start("workers.app", QUEUES, "bus")
    b.started_and_consuming(worker, "bus.normal")
    _queue_bus_sends(bus, "bench-sender", hist_reader, 500, payload="x" * 1024)
    wait_until(lambda: bus.runtime.store.inbox_depth(hist_reader)[0] >= 500, 60, "memory run")
    b.stop(worker)
    history_bytes = bus.runtime.redis.memory_usage(bus.runtime.keys.history(hist_reader)) or 0
    inbox = bus.runtime.keys.inbox(hist_reader)
    inbox_bytes = sum(bus.runtime.redis.memory_usage(k) or 0 for k in inbox.all())
    bus.close()
    return {
        "worker_rss_before_mb": round(before, 1),
        "worker_rss_after_mb": round(after, 1),
        "messages": n,
        "redis_bytes_per_history_entry_1kib": round(history_bytes / 500),
        "redis_bytes_per_inbox_entry_1kib": round(inbox_bytes / 500),
    }


def mcp_round_trips(b: Bench, calls: int, clients: int, port: int, token: str) -> dict[str, Any]:
    """The SDK's client: `clients` sessions of one agent, each `calls` times send_message then
    read_messages. Each session connects and calls both tools once before the clock starts
    (its first call of a tool also lists the tools and compiles their output schemas), so
    the figures are of calls, not of connecting."""

    async def one_client(
        results: dict[str, list[float]], ready: asyncio.Semaphore, go: asyncio.Event
    ) -> None:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
        async with Client(
            streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http)
        ) as client:
            await send_then_read(client, calls, results["send"], results["read"], ready, go)

    async def run() -> dict[str, Any]:
        results: dict[str, list[float]] = {"send": [], "read": []}
        ready, go = asyncio.Semaphore(0), asyncio.Event()
        tasks = [asyncio.create_task(one_client(results, ready, go)) for _ in range(clients)]
        for _ in range(clients):
            await asyncio.wait_for(ready.acquire(), 60)
        t0 = time.perf_counter()
        go.set()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
        return {
            "clients": clients,
            "calls_per_s": round(2 * calls * clients / elapsed, 1),
            "send_p50_ms": round(percentile(results["send"], 50) * 1000, 2),
            "send_p99_ms": round(percentile(results["send"], 99) * 1000, 2),
            "read_p50_ms": round(percentile(results["read"], 50) * 1000, 2),
            "read_p99_ms": round(percentile(results["read"], 99) * 1000, 2),
        }

    return asyncio.run(run())


def mcp_longpoll_wake(b: Bench, probes: int, port: int, token: str) -> list[float]:
    bus = b.bus()

    async def run() -> list[float]:
        wakes = []
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
        async with Client(
            streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http)
        ) as client:
            for i in range(probes):
                waiting = asyncio.create_task(
                    client.call_tool("read_messages", {"wait_seconds": 10})
                )
                await asyncio.sleep(0.2)
                receipt = await asyncio.to_thread(
                    bus.send_message,
                    {"from": "bench-sender", "to": "bench-waiter", "payload": {"i": i}},
                )
                result = await waiting
                returned = time.time()
                status = bus.runtime.store.status(receipt.id)
                wakes.append(returned - float(status["delivered_at"]) / 1000)
                ids = [m["id"] for m in result.structured_content["messages"]]
                await client.call_tool("ack_messages", {"ids": ids})
        return wakes

    try:
        return asyncio.run(run())
    finally:
        bus.close()


def durability(b: Bench, n: int, rate: float, seconds: float, reps: int) -> dict[str, Any]:
    """The price of MESSAGE_BUS_REDIS_MIN_REPLICAS: drain rate and send -> inbox latency at
    0, 1 and 2 replicas, the settings taking turns so drift moves them alike."""
    runs: dict[int, dict[str, list[float]]] = {k: {"drain": [], "lat": []} for k in (0, 1, 2)}
    for _ in range(reps):
        for k in runs:
            b.env["MESSAGE_BUS_REDIS_MIN_REPLICAS"] = str(k)
            runs[k]["drain"].append(bus_drain(b, n))
            runs[k]["lat"] += bus_latency(b, rate, seconds)
    b.env.pop("MESSAGE_BUS_REDIS_MIN_REPLICAS")
    return {
        k: {
            "drain_msgs_per_s": sorted(r["drain"])[len(r["drain"]) // 2],
            "latency_p50_ms": round(percentile(r["lat"], 50) * 1000, 2),
            "latency_p99_ms": round(percentile(r["lat"], 99) * 1000, 2),
        }
        for k, r in runs.items()
    }
