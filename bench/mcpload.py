"""The MCP HTTP server under load: 1, 8 and 32 agents at once, against the server in one
process and in N processes on the same address (MESSAGE_BUS_MCP_PROCESSES), taking turns
in the same run.

Each agent has a token of its own (eight agents, not one agent eight times) and no rate
limit (the front door's 100/s is policy, not the server's capacity), and calls send_message then read_messages in a loop, one
request at a time, as a model does. The clients connect and make one call of each tool
before the clock starts, so the figures are of calls, not of connecting.

The clients are lean: the requests of the 2026-07-28 era that the SDK's client sends (the
same headers and `_meta`), written on keep-alive HTTP/1.1 connections with asyncio streams,
each answer checked to be a tool result that is not an error. The SDK's client spends about
as much CPU per call as the server does (pydantic models of every request and result,
output-schema validation, httpx), so eight of them in one process measure the client as
much as the server (bench/workloads.py `mcp_round_trips` keeps that view).

Each row also has the CPU a call cost each part of the bus (server, worker, Redis,
RabbitMQ, the clients): whether N processes can serve N times the calls depends on the
cores left beside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

from bench.harness import ROOT, Bench, percentile, send_then_read, wait_until
from bus.tokens import TokenFile

CLIENTS = (1, 8, 32)
UNLIMITED = "1000000/s"  # the agents' rate limit is policy, not what is measured
SHARE = {1: 1, 8: 4, 32: 10}  # of the workload's calls, per client, at each count
PROTOCOL = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": PROTOCOL,
    "io.modelcontextprotocol/clientInfo": {"name": "msgbus-bench", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


class CallFailed(RuntimeError):
    pass


class LeanClient:
    """One agent: one keep-alive connection, one request at a time."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.next_id = 0

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()

    def _request(self, name: str, arguments: dict[str, Any]) -> bytes:
        self.next_id += 1
        body = orjson.dumps(
            {
                "jsonrpc": "2.0",
                "id": self.next_id,
                "method": "tools/call",
                "params": {"name": name, "arguments": arguments, "_meta": META},
            }
        )
        head = (
            f"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1:{self.port}\r\n"
            f"authorization: Bearer {self.token}\r\n"
            "accept: application/json, text/event-stream\r\ncontent-type: application/json\r\n"
            f"mcp-protocol-version: {PROTOCOL}\r\nmcp-method: tools/call\r\nmcp-name: {name}\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The tool's structured result; CallFailed for an HTTP, JSON-RPC or tool error."""
        assert self.reader is not None and self.writer is not None
        self.writer.write(self._request(name, arguments))
        head = await self.reader.readuntil(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines if ln)
        }
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            body = await self._chunked()
        else:
            raise CallFailed(f"{name}: an answer without a length ({status})")
        if headers.get("content-type", "").startswith("text/event-stream"):
            data = [ln[5:].strip() for ln in body.split(b"\n") if ln.startswith(b"data:")]
            body = data[-1] if data else b"{}"
        if not status.startswith("HTTP/1.1 200"):
            raise CallFailed(f"{name}: {status}: {body[:200]!r}")
        result = orjson.loads(body).get("result")
        if result is None or result.get("isError"):
            raise CallFailed(f"{name}: {body[:300]!r}")
        structured: dict[str, Any] = result["structuredContent"]
        return structured

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append((await self.reader.readexactly(size + 2))[:-2])


@dataclass
class Load:
    """What one run of `clients` agents saw: every call's time, and how long it all took."""

    clients: int
    calls: int = 0
    elapsed: float = 0.0
    server_cpu: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)  # CPU seconds of each part
    send: list[float] = field(default_factory=list)
    read: list[float] = field(default_factory=list)


async def _round_trips(
    port: int, tokens: list[str], calls: int, server_pid: int, parts: Parts
) -> Load:
    load = Load(len(tokens), calls=2 * calls * len(tokens))
    clients = [LeanClient(port, token) for token in tokens]
    ready, go = asyncio.Semaphore(0), asyncio.Event()

    async def one(client: LeanClient) -> None:
        await client.connect()
        await send_then_read(client, calls, load.send, load.read, ready, go)

    tasks = [asyncio.create_task(one(c)) for c in clients]
    try:
        for _ in clients:  # every client connected and warm before the clock starts
            await asyncio.wait_for(ready.acquire(), 60)
        before = parts.now(server_pid)
        t0 = time.perf_counter()
        go.set()
        await asyncio.gather(*tasks)
        load.elapsed = time.perf_counter() - t0
        after = parts.now(server_pid)
        load.parts = {k: after[k] - before[k] for k in before}
        load.server_cpu = load.parts["server"]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients:
            await c.close()
    return load


def round_trips(port: int, tokens: list[str], calls: int, server_pid: int, parts: Parts) -> Load:
    """`len(tokens)` agents at once, each `calls` times send_message then read_messages."""
    return asyncio.run(_round_trips(port, tokens, calls, server_pid, parts))


def summary(loads: list[Load]) -> dict[str, Any]:
    """Calls/s over the runs taken together, and percentiles of all their calls."""
    send = [t for x in loads for t in x.send]
    read = [t for x in loads for t in x.read]
    calls = sum(x.calls for x in loads)
    return {
        "clients": loads[0].clients,
        "calls_per_s": round(calls / sum(x.elapsed for x in loads), 1),
        "calls_per_s_runs": [round(x.calls / x.elapsed, 1) for x in loads],  # drift shows
        "send_p50_ms": round(percentile(send, 50) * 1000, 2),
        "send_p99_ms": round(percentile(send, 99) * 1000, 2),
        "read_p50_ms": round(percentile(read, 50) * 1000, 2),
        "read_p99_ms": round(percentile(read, 99) * 1000, 2),
        "server_cpu_ms_per_call": round(sum(x.server_cpu for x in loads) / calls * 1000, 2),
        "cpu_ms_per_call": {
            k: round(sum(x.parts[k] for x in loads) / calls * 1000, 2) for k in loads[0].parts
        },
    }


@dataclass
class Parts:
    """CPU seconds so far of the server's processes, the worker's, Redis (its own count),
    the RabbitMQ node and this process (the clients). Redis and RabbitMQ serve whatever
    else runs on the machine too: on a shared machine their share is an upper bound."""

    b: Bench
    worker_pid: int

    def now(self, server_pid: int) -> dict[str, float]:
        client = self.b.redis()
        try:
            info = client.info("cpu")
        finally:
            client.close()
        beams = [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "beam.smp"]
        found = {
            "server": tree_cpu(server_pid),
            "worker": tree_cpu(self.worker_pid),
            "redis": float(info["used_cpu_user"] + info["used_cpu_sys"]),
            "rabbitmq": sum(tree_cpu(pid) for pid in beams),
        }
        times = os.times()  # last: the looking above is not the clients' work
        return found | {"clients": times.user + times.system}


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (the server's processes)."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = p.cpu_times()
                total += times.user + times.system
    return total


def compared() -> list[int]:
    """One process, and one per core (at least 2)."""
    return [1, max(2, os.cpu_count() or 2)]


@contextlib.contextmanager
def server(b: Bench, tokens: Path, processes: int) -> Iterator[tuple[int, int]]:
    """`msgbus mcp --http --processes N` on a free port, until it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = b.logs / f"mcp-{processes}.log"
    argv = ["--http", "--port", str(port), "--tokens-file", str(tokens)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "msgbus", "mcp", *argv, "--processes", str(processes)],
        cwd=ROOT,
        env=b.env | {"MESSAGE_BUS_RATE_LIMIT": UNLIMITED},
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        start_new_session=True,
    )

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the MCP server exited: {log.read_text()[-2000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 60, "the MCP server", 0.05)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


def compare(b: Bench, calls: int, reps: int, worker_pid: int) -> dict[str, Any]:
    """Rows for 1, 8 and 32 agents, one process against N; the worker must be consuming."""
    tokens_path = Path(tempfile.mkdtemp()) / "tokens.json"
    issued = TokenFile(tokens_path)
    tokens = [issued.create(f"bench-load-{i}") for i in range(max(CLIENTS))]
    layouts = compared()
    loads: dict[int, dict[int, list[Load]]] = {n: {c: [] for c in CLIENTS} for n in layouts}
    parts = Parts(b, worker_pid)
    for _ in range(reps):  # the layouts take turns, so a drift of the machine moves both
        for n in layouts:
            with server(b, tokens_path, n) as (port, pid):
                round_trips(port, tokens[:8], 2, pid, parts)  # warm-up: every process, its caches
                for clients in CLIENTS:
                    each = max(1, calls // SHARE[clients])
                    found = round_trips(port, tokens[:clients], each, pid, parts)
                    loads[n][clients].append(found)
                    b.clear_keys()  # the sink's inbox stays under its cap
    rows = {str(n): {str(c): summary(loads[n][c]) for c in CLIENTS} for n in layouts}
    many = str(layouts[-1])
    return {
        "rows": rows,
        "mcp_calls_per_s_8": rows[many]["8"]["calls_per_s"],
        "mcp_send_p99_ms_8": rows[many]["8"]["send_p99_ms"],
        "mcp_calls_ratio_8": round(
            rows[many]["8"]["calls_per_s"] / rows["1"]["8"]["calls_per_s"], 3
        ),
        "mcp_calls_ratio_32": round(
            rows[many]["32"]["calls_per_s"] / rows["1"]["32"]["calls_per_s"], 3
        ),
    }
