"""Worker-agent round trips: a request to the echo WorkerAgent (examples/echo_agent.py) and
its correlated response, beside raw Celery's nearest equivalent in the same run: a task
returning its argument, `send_task(...).get()`, its result through a Redis result backend
and through rpc://.

Each side has the same worker layout (the bus: its delivery worker and the agent's own
worker, each `--pool` x `--concurrency`; raw Celery: one worker of that pool and size) and
is timed from the caller: one round trip is one `bus.request`, one MCP `request` tool call,
or one raw `.get()`. The sides take turns, so a machine that slows down during the run
moves every side alike; each figure is the median run's.
"""

from __future__ import annotations

import asyncio
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from bench.harness import QUEUES, ROOT, Bench, percentile
from bench.raw_app import echo_client

ECHO = "examples.echo_agent:agent"
CALLERS = (1, 8)
SIDES = ("raw_redis", "raw_rpc", "bus")


class Callers:
    """Caller threads that live across runs: caller k is always the same thread (a Celery
    app's result consumer serves the thread that made it)."""

    def __init__(self, most: int) -> None:
        self._jobs: list[queue.SimpleQueue[Callable[[], None] | None]] = [
            queue.SimpleQueue() for _ in range(most)
        ]
        self._threads = [
            threading.Thread(target=self._serve, args=(jobs,), daemon=True) for jobs in self._jobs
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _serve(jobs: queue.SimpleQueue[Callable[[], None] | None]) -> None:
        while (job := jobs.get()) is not None:
            job()

    def run(self, calls: int, callers: int, one: Callable[[int, int], Any]) -> dict[str, Any]:
        """`callers` threads make `calls` round trips between them (`one(caller, i)`)."""
        per = max(1, calls // callers)
        took: list[float] = []
        errors: list[BaseException] = []
        done = threading.Semaphore(0)

        def job(caller: int) -> None:
            try:
                for i in range(per):
                    t0 = time.perf_counter()
                    one(caller, i)
                    took.append(time.perf_counter() - t0)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)
            finally:
                done.release()

        t0 = time.perf_counter()
        for caller in range(callers):
            self._jobs[caller].put(lambda caller=caller: job(caller))
        for _ in range(callers):
            if not done.acquire(timeout=600):
                raise TimeoutError("benchmark callers did not finish in 600 s")
        elapsed = time.perf_counter() - t0
        if errors:
            raise errors[0]
        return figures(took, callers, per * callers / elapsed)

    def close(self) -> None:
        for jobs in self._jobs:
            jobs.put(None)
        for t in self._threads:
            t.join(10)


def figures(took: list[float], callers: int, rate: float) -> dict[str, Any]:
    return {
        "callers": callers,
        "round_trips_per_s": round(rate, 1),
        "p50_ms": round(percentile(took, 50) * 1000, 2),
        "p99_ms": round(percentile(took, 99) * 1000, 2),
        "samples": len(took),
    }


def raw_round_trips(b: Bench, backend: str, calls: int) -> list[dict[str, Any]]:
    """raw.echo with its result through `backend` ("redis" or "rpc"), at each count of
    callers."""
    prefix = f"{b.prefix}raw-results:"
    url = b.env["MESSAGE_BUS_REDIS_URL"] if backend == "redis" else "rpc://"
    worker = b.start(
        "bench.raw_app",
        "raw.echo",
        f"raw-echo-{backend}",
        env={"RAW_RESULT_BACKEND": url, "RAW_RESULT_PREFIX": prefix},
    )
    most = max(CALLERS)
    clients = [echo_client(b.broker_url, b.queue_type, url, prefix) for _ in range(most)]
    threads = Callers(most)
    try:
        b.started_and_consuming(worker, "raw.echo")

        def one(caller: int, i: int) -> None:
            value = {"i": i, "c": caller}
            result = clients[caller].send_task("raw.echo", args=[value], queue="raw.echo")
            if result.get(timeout=30) != value:
                raise RuntimeError("raw.echo answered something else")

        threads.run(4 * most, most, one)  # warm-up: connections, result consumers
        return [threads.run(calls, n, one) for n in CALLERS]
    finally:
        threads.close()
        for client in clients:
            client.close()
        b.stop(worker)


@contextmanager
def echo_agent(b: Bench, delivery_worker: bool = True) -> Iterator[None]:
    """The bus side: a delivery worker (unless one runs already) and the echo agent's own
    worker."""
    worker = b.start("workers.app", QUEUES, "bus") if delivery_worker else None
    log = b.logs / f"echo-agent-{uuid.uuid4().hex[:6]}.log"
    agent = subprocess.Popen(
        [sys.executable, "-m", "msgbus", "agent", "run", ECHO, "-c", str(b.concurrency)]
        + ["-l", "WARNING"],
        cwd=ROOT,
        env=b.env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        start_new_session=True,
    )
    b.procs.append(agent)
    try:
        if worker is not None:
            b.started_and_consuming(worker, "bus.normal")
        b.started_and_consuming(agent, "agent.echo")
        yield
    finally:
        b.stop(agent)
        if worker is not None:
            b.stop(worker)


def bus_round_trips(b: Bench, calls: int) -> list[dict[str, Any]]:
    """`bus.request` to the echo agent, one requester id per caller thread."""
    bus = b.bus()
    run = uuid.uuid4().hex[:6]
    most = max(CALLERS)
    threads = Callers(most)
    try:

        def one(caller: int, i: int) -> None:
            payload = {"i": i}
            asker = f"asker-{run}-{caller}"
            response = bus.request({"from": asker, "to": "echo", "payload": payload}, timeout=30)
            if response.payload != {"echo": payload, "from": "echo"}:
                raise RuntimeError(f"the echo agent answered {response.payload!r}")

        threads.run(2 * most, most, one)  # warm-up
        return [threads.run(calls, n, one) for n in CALLERS]
    finally:
        threads.close()
        bus.close()


def mcp_round_trips(b: Bench, calls: int, port: int, token: str) -> dict[str, Any]:
    """The MCP `request` tool to the echo agent over the bench's HTTP MCP server (its
    delivery worker running), at each count of clients (one MCP session each, all with the
    bench's token)."""

    async def client_calls(count: int, took: list[float]) -> None:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
        async with Client(
            streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http)
        ) as client:
            for i in range(count):
                t0 = time.perf_counter()
                result = await client.call_tool(
                    "request", {"to": "echo", "payload": {"i": i}, "timeout_seconds": 30}
                )
                took.append(time.perf_counter() - t0)
                content = result.structured_content or {}
                if content.get("status") != "answered":
                    raise RuntimeError(f"MCP request not answered: {result}")

    async def run(n: int, count: int) -> dict[str, Any]:
        took: list[float] = []
        t0 = time.perf_counter()
        await asyncio.gather(*(client_calls(count, took) for _ in range(n)))
        return figures(took, n, len(took) / (time.perf_counter() - t0))

    with echo_agent(b, delivery_worker=False):
        asyncio.run(run(1, 4))  # warm-up
        rows = [asyncio.run(run(n, max(1, calls // n))) for n in CALLERS]
    return {f"callers_{row['callers']}": row for row in rows}


def roundtrips(
    b: Bench, calls: int, reps: int, mcp_rows: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Every side at 1 and 8 callers, the sides taking turns `reps` times; the median run
    of each, and the ratios to the better raw backend (its throughput and its p99).
    `mcp_rows`: the MCP `request` tool's figures, measured with the MCP workload."""
    runs: dict[str, list[list[dict[str, Any]]]] = {side: [] for side in SIDES}
    for _ in range(reps):
        runs["raw_redis"].append(raw_round_trips(b, "redis", calls))
        runs["raw_rpc"].append(raw_round_trips(b, "rpc", calls))
        with echo_agent(b):
            runs["bus"].append(bus_round_trips(b, calls))
        b.fresh_redis()
    rows: dict[str, Any] = {
        side: {
            f"callers_{n}": _median_run([r[k] for r in runs[side]]) for k, n in enumerate(CALLERS)
        }
        for side in SIDES
    }
    if mcp_rows:
        rows["mcp"] = mcp_rows
    out: dict[str, Any] = {"agents": rows}
    for n in CALLERS:
        key = f"callers_{n}"
        best = max(rows["raw_redis"][key], rows["raw_rpc"][key], key=_rate)
        rows.setdefault("better_raw", {})[key] = (
            "raw_redis" if best is rows["raw_redis"][key] else "raw_rpc"
        )
        for side, suffix in (("bus", ""), ("mcp", "_mcp")):
            if side in rows:
                mine = rows[side][key]
                out[f"agent_roundtrip_ratio{suffix}_{n}"] = round(_rate(mine) / _rate(best), 3)
                out[f"agent_p99_ratio{suffix}_{n}"] = round(
                    mine["p99_ms"] / max(best["p99_ms"], 1e-6), 3
                )
    out["agent_roundtrip_ratio"] = out["agent_roundtrip_ratio_1"]
    return out


def _rate(row: dict[str, Any]) -> float:
    return float(row["round_trips_per_s"])


def _median_run(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput (its p50/p99 with it), and every run's rate."""
    ordered = sorted(samples, key=_rate)
    middle = dict(ordered[len(ordered) // 2])
    middle["per_run_round_trips_per_s"] = [_rate(r) for r in samples]
    return middle
