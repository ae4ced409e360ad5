"""Benchmark plumbing: an isolated vhost and key prefix, worker processes, timing helpers,
an agent's timed MCP round trips."""

from __future__ import annotations

import asyncio
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import psutil
import redis
from kombu import Connection

from bus.client import MessageBus
from bus.redis_conn import connect
from bus.settings import Settings
from msgbus.cluster import ClusterLayout, LocalCluster
from msgbus.services import delete_vhost, ensure_vhost, services_up

ROOT = Path(__file__).resolve().parent.parent
QUEUES = "bus.critical,bus.high,bus.normal,bus.low"


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.005
) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(interval)
    raise TimeoutError(f"benchmark gave up waiting for {what} after {timeout}s")


class ToolCaller(Protocol):
    """An MCP client as the MCP workloads drive it: the SDK's client or mcpload's lean one."""

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any: ...


async def send_then_read(
    client: ToolCaller,
    calls: int,
    send: list[float],
    read: list[float],
    ready: asyncio.Semaphore,
    go: asyncio.Event,
) -> None:
    """One agent's MCP round trips, as a model makes them: send_message and read_messages
    once each before the clock (a first call may list tools or compile schemas), `ready`
    released, then on `go` `calls` times send_message then read_messages, each call's
    seconds appended to `send` and `read`."""
    await client.call_tool("send_message", {"to": "bench-sink", "payload": 0})
    await client.call_tool("read_messages", {"limit": 1, "wait_seconds": 0})
    ready.release()
    await go.wait()
    for _ in range(calls):
        t0 = time.perf_counter()
        await client.call_tool("send_message", {"to": "bench-sink", "payload": 1})
        t1 = time.perf_counter()
        await client.call_tool("read_messages", {"limit": 1, "wait_seconds": 0})
        send.append(t1 - t0)
        read.append(time.perf_counter() - t1)


class Bench:
    """One isolated bus for the run (its own vhost and key prefix)."""

    def __init__(
        self,
        concurrency: int = 4,
        pool: str = "threads",
        queue_type: str = "classic",
        cluster: bool = False,
    ) -> None:
        """`cluster`: on the local multi-node stack (`msgbus services cluster up`, started
        when it is not running): three RabbitMQ nodes with quorum queues, Redis through
        Sentinel with two replicas."""
        self.vhost = f"bench-{uuid.uuid4().hex[:8]}"
        self.cluster: LocalCluster | None = None
        if cluster:
            self.cluster = LocalCluster(ClusterLayout.default())
            self.cluster.up()
            self.cluster.ensure_vhost(self.vhost)
            self.broker_url = self.cluster.broker_url(self.vhost)
            redis_url, queue_type = self.cluster.redis_url(), "quorum"
        else:
            base = Settings()
            services_up(base.redis_url, base.broker_url)
            ensure_vhost(base.broker_url, self.vhost)
            self.broker_url = base.broker_url.rstrip("/") + "/" + self.vhost
            redis_url = base.redis_url
        self.prefix = f"bench:{self.vhost}:"
        self.concurrency, self.pool, self.queue_type = concurrency, pool, queue_type
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MESSAGE_BUS_")} | {
            "MESSAGE_BUS_REDIS_URL": redis_url,
            "MESSAGE_BUS_BROKER_URL": self.broker_url,
            "MESSAGE_BUS_KEY_PREFIX": self.prefix,
            "MESSAGE_BUS_SECRET": "bench-secret-0123456789",
            "MESSAGE_BUS_RATE_LIMIT": "0",
            # One inbox takes a whole workload (20,000 batched, a 10,000 backlog) from one
            # sender to readers that never connect: the limits that keep one agent from
            # filling a shared bus are lifted here, as the rate limit is.
            "MESSAGE_BUS_INBOX_MAX": "1000000",
            "MESSAGE_BUS_MAX_UNSEEN_RECIPIENTS": "1000000",
            "MESSAGE_BUS_METRICS_PORT": "0",
            "MESSAGE_BUS_QUEUE_TYPE": queue_type,
            "MESSAGE_BUS_HISTORY_LIMIT": "1000",
            "PYTHONPATH": str(ROOT),
        }
        self.logs = Path(tempfile.mkdtemp(prefix="msgbus-bench-"))
        self.procs: list[subprocess.Popen[bytes]] = []

    def bus(self) -> MessageBus:
        values = {
            k.removeprefix("MESSAGE_BUS_").lower(): v
            for k, v in self.env.items()
            if k.startswith("MESSAGE_BUS_")
        }
        return MessageBus(Settings(**values))

    def start(
        self,
        app: str,
        queues: str,
        name: str,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        log = self.logs / f"{name}.log"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                app,
                "worker",
                "-Q",
                queues,
                "-P",
                self.pool,
                "-c",
                str(2 if name.endswith("express") else self.concurrency),
                "-l",
                "WARNING",
                "-n",
                f"{name}-{uuid.uuid4().hex[:6]}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                *(extra or []),
            ],
            cwd=ROOT,
            env=self.env | (env or {}),
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def started_and_consuming(self, proc: subprocess.Popen[bytes], queue: str) -> None:
        """Waits until the worker has a consumer on `queue` (it is taking messages)."""

        def consuming() -> bool:
            if proc.poll() is not None:
                raise RuntimeError("benchmark worker exited at start")
            return self.consumers(queue) > 0

        wait_until(consuming, 60, f"a consumer on {queue}", interval=0.01)

    def queue_state(self, queue: str) -> tuple[int, int]:
        with Connection(self.broker_url) as conn:
            channel = conn.channel()
            try:
                ok = channel.queue_declare(queue, passive=True)
                return int(ok.message_count), int(ok.consumer_count)
            finally:
                channel.close()

    def consumers(self, queue: str) -> int:
        try:
            return self.queue_state(queue)[1]
        except Exception:  # noqa: BLE001 - not declared yet
            return 0

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def clear_keys(self) -> None:
        """Deletes this run's Redis keys: each workload starts from an empty keyspace (what
        earlier workloads left would otherwise grow Redis to hundreds of MB and bring AOF
        rewrites, forks and their CPU, into the later workloads' figures)."""

        client = self.redis()
        keys = list(client.scan_iter(match=f"{self.prefix}*", count=5000))
        for i in range(0, len(keys), 1000):
            client.unlink(*keys[i : i + 1000])
        client.close()

    def fresh_redis(self) -> None:
        self.clear_keys()
        self.compact_redis()

    def compact_redis(self, timeout: float = 120.0) -> None:
        """Rewrites Redis's append-only file now and waits for it, so that a rewrite owed
        to an earlier workload's writes (a fork and a child busy for a second or more on a
        two-core machine) does not fall into the next workload's figures."""
        client = self.redis()
        try:
            try:
                if client.config_get("appendonly").get("appendonly") != "yes":
                    return
            except redis.ResponseError:  # CONFIG refused (a managed Redis): leave it be
                return
            if not _aof_rewriting(client):
                try:
                    client.bgrewriteaof()
                except redis.ResponseError:  # one already running or scheduled
                    pass
            wait_until(lambda: not _aof_rewriting(client), timeout, "AOF rewrite", 0.05)
        finally:
            client.close()

    def redis(self) -> Any:
        """A client on the run's Redis (through Sentinel on the cluster; str replies)."""
        return connect(self.env["MESSAGE_BUS_REDIS_URL"])

    def close(self) -> None:
        for proc in self.procs:
            self.stop(proc)
        if self.cluster is not None:
            self.cluster.delete_vhost(self.vhost)
        else:
            delete_vhost(Settings().broker_url, self.vhost)
        self.clear_keys()


def _aof_rewriting(client: Any) -> bool:
    info = client.info("persistence")
    return bool(info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"])


def rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def describe_machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
