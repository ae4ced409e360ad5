"""Per-message costs, the inputs of docs/scaling.md's capacity model: what one direct message
with a 1 KiB payload (sent, delivered, read, acked) costs each part of the bus.

Measured as counter deltas over a run of n messages, divided by n: Redis's own counters
(INFO commandstats, stats, replication, cpu, memory), CPU seconds of the RabbitMQ node
processes and of the worker's process tree (psutil), and this process's CPU for the
sending and the reading side. Nothing else should run meanwhile for the figures to mean
what they say. CPU the processes burn idle (measured for a few seconds first) is taken
off, so the figures are what the messages cost.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import psutil
from redis import Redis

from bench.harness import QUEUES, Bench, wait_until

PAYLOAD = {"text": "x" * 1024}


def per_message_costs(b: Bench, n: int) -> dict[str, Any]:
    bus, reader = b.bus(), f"cost-{uuid.uuid4().hex[:6]}"
    worker = b.start("workers.app", QUEUES, "bus")
    b.started_and_consuming(worker, "bus.normal")
    _send(bus, reader, 200)  # warm-up: connections, scripts, caches
    _drain_inbox(bus, reader, 200)
    redis, replicas = b.redis(), _replicas(b)
    idle = _idle_rates(b, redis, replicas, worker.pid, IDLE_SECONDS if n >= 1000 else 1.0)
    started = time.monotonic()
    before, t0 = _snapshot(b, redis, replicas, worker.pid), time.process_time()
    _send(bus, reader, n)
    sent_cpu = time.process_time() - t0
    wait_until(lambda: bus.runtime.store.inbox_depth(reader)[0] >= n, 600, "deliveries", 0.05)
    t1 = time.process_time()
    _drain_inbox(bus, reader, n)
    read_cpu = time.process_time() - t1
    after = _snapshot(b, redis, replicas, worker.pid)
    elapsed = time.monotonic() - started
    b.stop(worker)
    bus.close()
    for key, rate in idle.items():  # what the processes burn with no message at all
        after[key] -= rate * elapsed
    out = _per_message(before, after, n)
    out["idle_cpu_per_s"] = {k: round(v, 4) for k, v in idle.items()}
    out["sender_cpu_us"] = round(sent_cpu / n * 1e6, 1)
    out["reader_cpu_us"] = round(read_cpu / n * 1e6, 1)
    out["n"] = n
    return out


IDLE_SECONDS = 5.0  # --smoke's tiny runs idle 1 s: their figures mean little anyway
CPU_KEYS = ("redis_cpu", "replica_cpu", "broker_cpu", "worker_cpu")


def _idle_rates(
    b: Bench, redis: Any, replicas: list[Any], worker_pid: int, seconds: float
) -> dict[str, float]:
    """CPU seconds per second each part spends idle (Erlang nodes keep their schedulers,
    Raft heartbeats and metrics going; Redis its cron), to subtract from the loaded run."""
    first = _snapshot(b, redis, replicas, worker_pid)
    time.sleep(seconds)
    last = _snapshot(b, redis, replicas, worker_pid)
    return {key: max(0.0, (last[key] - first[key]) / seconds) for key in CPU_KEYS}


def _send(bus: Any, reader: str, n: int) -> None:
    for _ in range(n):
        bus.send_message({"from": "cost-sender", "to": reader, "payload": PAYLOAD})


def _drain_inbox(bus: Any, reader: str, n: int) -> None:
    done = 0
    while done < n:
        messages = bus.read(reader, limit=100)
        if not messages:
            break
        bus.ack(reader, [m.id for m in messages])
        done += len(messages)


def _replicas(b: Bench) -> list[Any]:
    if b.cluster is None:
        return []
    primary = b.cluster.primary()
    return [
        Redis(port=r.port, decode_responses=True)
        for r in b.cluster.redis
        if r is not primary and r.answers()
    ]


def _broker_pids(b: Bench) -> list[int]:
    if b.cluster is not None:
        return [pid for node in b.cluster.rabbits if (pid := node.pid())]
    port = int(b.broker_url.split("@")[-1].split("/")[0].rsplit(":", 1)[-1] or 5672)
    return [
        c.pid
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid
    ]


def _cpu(pids: list[int], tree: bool = False) -> float:
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in [proc, *(proc.children(recursive=True) if tree else [])]:
                times = p.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            continue
    return total


def _snapshot(b: Bench, redis: Any, replicas: list[Any], worker_pid: int) -> dict[str, Any]:
    stats, cpu = redis.info("stats"), redis.info("cpu")
    return {
        "commands": {k: v["calls"] for k, v in redis.info("commandstats").items()},
        "net_in": stats["total_net_input_bytes"],
        "net_out": stats["total_net_output_bytes"],
        "repl_offset": redis.info("replication").get("master_repl_offset", 0),
        "redis_cpu": cpu["used_cpu_user"] + cpu["used_cpu_sys"],
        "replica_cpu": sum(
            r.info("cpu")["used_cpu_user"] + r.info("cpu")["used_cpu_sys"] for r in replicas
        ),  # fmt: skip
        "memory": redis.info("memory")["used_memory"],
        "broker_cpu": _cpu(_broker_pids(b)),
        "worker_cpu": _cpu([worker_pid], tree=True),
    }


def _per_message(before: dict[str, Any], after: dict[str, Any], n: int) -> dict[str, Any]:
    def per(key: str, scale: float = 1.0) -> float:
        return round((after[key] - before[key]) / n * scale, 2)

    by_command = {
        name.removeprefix("cmdstat_"): round((calls - before["commands"].get(name, 0)) / n, 2)
        for name, calls in after["commands"].items()
        if calls - before["commands"].get(name, 0) >= n / 10
    }
    return {
        # Script calls (one round trip each, or a share of one when pipelined) and every
        # command Redis executed, those inside scripts included (kinds under 0.1 a message,
        # such as this run's own INFO calls, are left out).
        "redis_scripts": by_command.get("evalsha", 0.0),
        "redis_commands": round(sum(by_command.values()), 2),
        "redis_commands_by_kind": dict(sorted(by_command.items(), key=lambda kv: -kv[1])),
        "redis_in_bytes": per("net_in"),
        "redis_out_bytes": per("net_out"),
        "replication_bytes": per("repl_offset"),
        "redis_cpu_us": per("redis_cpu", 1e6),
        "replicas_cpu_us": per("replica_cpu", 1e6),
        "redis_memory_bytes_kept": per("memory"),
        "broker_cpu_us": per("broker_cpu", 1e6),
        "worker_cpu_us": per("worker_cpu", 1e6),
    }
