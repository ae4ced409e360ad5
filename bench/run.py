"""Runs every workload with its baseline and prints a table (or one JSON object).

msgbus bench [--json] [--quick | --smoke] [--only drain,latency,agents,...] [--queue-type quorum]
             [--pool threads --concurrency 4] [--plot] [--cluster]

`--cluster` runs on the local multi-node stack and adds `durability` (MIN_REPLICAS 0/1/2).

`--only sizes` is the quick report of what a model pays to read its mail (seconds).

`--only scripts` times the script runner's two backends against each other (see
bench/scripts_ab.py).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import httpx
from kombu import Connection

from bench import agents, costs, linger, mcpload, plots, scripts_ab, sizes
from bench import workloads as w
from bench.harness import ROOT, Bench, describe_machine, percentile, summary, wait_until
from bus.tokens import TokenFile

# How the bus uses publisher confirms (reported beside the producer figures).
CONFIRMS = (
    "one publish, one confirm: a send returns once the broker has confirmed its task "
    "(kombu waits for the basic.ack on the channel it published on). Confirms are not "
    "batched across sends; concurrent producers each publish on a pooled connection of "
    "their own, so their confirms are in flight together. send_batch carries up to 500 "
    "messages per priority in one task: one confirm for the group."
)

ALL = [
    "drain",
    "batch",
    "producer",
    "latency",
    "priority",
    "mcp",
    "agents",
    "footprint",
    "sizes",
    "costs",
    "scripts",  # the script runner's backends, A/B (bench/scripts_ab.py)
    "linger",  # bench/linger.py
]
# The figures the table leads with (every one a ratio to its baseline, or a target in ms).
HEADLINE = (
    "drain_ratio",
    "batch_ratio",
    "latency_p99_ratio_200",
    "latency_p99_ratio_500",
    "priority_p99_ms",
    "priority_backlog_p99_ratio",
    "mcp_calls_per_s_8",
    "mcp_send_p99_ms_8",
    "mcp_calls_ratio_8",
    "mcp_longpoll_wake_p99_ms",
    "read_chars_per_message_50",
    "read_chars_ratio_50",
    "agent_roundtrip_ratio",
    "linger_drain_ratio",
)


def ms(value: float) -> float:
    return round(value * 1000, 2)


@dataclass(frozen=True)
class Sizes:
    """How much each workload does: `full` (the figures in RESULTS.md, ~10 minutes),
    `quick` (~4 minutes) and `smoke` (CI: every workload runs, the figures mean little)."""

    reps: int
    drain: int
    batch: int
    producer: int
    latency_reps: int
    latency_seconds: float
    backlog: int
    probes: int
    mcp_calls: int
    mcp_wakes: int
    footprint: int
    agent_calls: int  # worker-agent round trips per side and count of callers
    agent_reps: int
    agent_mcp_calls: int


SIZES = {
    "full": Sizes(5, 4000, 20_000, 2000, 2, 10, 10_000, 20, 200, 150, 100_000, 400, 3, 100),
    "quick": Sizes(2, 1500, 5000, 600, 1, 4, 5000, 20, 50, 15, 20_000, 200, 1, 40),
    "smoke": Sizes(1, 100, 200, 30, 1, 0.5, 600, 2, 5, 2, 300, 16, 1, 8),
}


@contextmanager
def timed(out: dict[str, Any], name: str) -> Iterator[None]:
    """Records how long a workload took (`workload_seconds`) and says so on stderr, so a
    long run shows where it is and a slow one where its time went."""
    started = time.monotonic()
    try:
        yield
    finally:
        took = out.setdefault("workload_seconds", {})[name] = round(time.monotonic() - started, 1)
        print(f"bench: {name} took {took}s", file=sys.stderr, flush=True)


def repeat(reps: int, fn: Any, *args: Any) -> list[float]:
    return [fn(*args) for _ in range(reps)]


@dataclass(frozen=True)
class Options:
    """What one benchmark run measures, and where (the command's options)."""

    json: bool = False
    quick: bool = False
    smoke: bool = False
    only: str | None = None
    queue_type: str = "classic"
    cluster: bool = False
    concurrency: int = 4
    pool: str = "threads"
    out: Path = ROOT / "bench" / "out" / "results.json"
    plot: bool = False


def run(args: Options) -> dict[str, Any]:
    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    z = SIZES[size]
    only = set(args.only.split(",")) if args.only else set(ALL)
    if args.cluster and not args.only:
        only.add("durability")  # only a stack with replicas can price it
    b = Bench(args.concurrency, args.pool, args.queue_type, cluster=args.cluster)
    out: dict[str, Any] = {
        "machine": describe_machine(),
        "stack": "cluster: 3 RabbitMQ nodes, Redis + 2 replicas via 3 Sentinels"
        if args.cluster
        else "single node",
        "queue_type": b.queue_type,
        "worker": {"pool": b.pool, "concurrency": b.concurrency},
        "size": size,
    }
    try:
        b.compact_redis()  # what earlier runs wrote is not rewritten during this one
        if only & {"drain", "batch"}:
            with timed(out, "drain+batch"):
                out |= drains(b, only, z)
        if "producer" in only:
            with timed(out, "producer"):
                n, reps = z.producer, z.reps
                out["producer"] = {
                    "bus_1_producer_per_s": summary(repeat(reps, w.producer, b, n, 1)),
                    "bus_8_producers_per_s": summary(repeat(reps, w.producer, b, n, 8)),
                    "kombu_confirm_per_s": summary(repeat(reps, w.kombu_publish, b, n, True)),
                    "kombu_no_confirm_per_s": summary(
                        repeat(reps, w.kombu_publish, b, n * 5, False)
                    ),
                    "confirms": CONFIRMS,
                }
                p = out["producer"]
                p["ratio_1_to_kombu_confirm"] = round(
                    p["bus_1_producer_per_s"]["median"] / p["kombu_confirm_per_s"]["median"], 3
                )
                _reset(b)
        if "latency" in only:
            with timed(out, "latency"):
                out |= latencies(b, z.latency_reps, z.latency_seconds)
                _reset(b)
        if "priority" in only:
            with timed(out, "priority"):
                backlog, probes = z.backlog, z.probes
                idle = w.bus_priority(b, 0, probes)
                busy = w.bus_priority(b, backlog, probes)
                raw_busy = w.raw_priority(b, backlog, probes)
                _reset(b)
                out["priority"] = {
                    "backlog": backlog,
                    "no_backlog": _pcts(idle),
                    "with_backlog": _pcts(busy),
                    "raw_with_backlog": _pcts(raw_busy),
                }
                out.setdefault("_samples", {})["priority"] = {
                    "no backlog": idle,
                    "with backlog": busy,
                    "raw, with backlog": raw_busy,
                }
                out["priority_p99_ms"] = ms(percentile(busy, 99))
                out["priority_backlog_p99_ratio"] = round(
                    percentile(busy, 99) / max(percentile(idle, 99), 1e-6), 3
                )
        if "mcp" in only:
            with timed(out, "mcp"):
                out |= mcp(b, z, z.agent_mcp_calls if "agents" in only else 0)
                _reset(b)
        if "agents" in only:
            with timed(out, "agents"):
                out |= agents.roundtrips(b, z.agent_calls, z.agent_reps, out.pop("agent_mcp", None))
                _reset(b)
        if "costs" in only:
            with timed(out, "costs"):
                out["costs"] = costs.per_message_costs(b, z.drain)
                _reset(b)
        if "linger" in only:
            with timed(out, "linger"):
                out |= linger.run(b, z.drain, z.reps, z.latency_seconds, z.probes * 5)
                _reset(b)
        if "durability" in only:
            with timed(out, "durability"):
                if b.cluster is None:
                    raise SystemExit("msgbus bench: --only durability needs --cluster (replicas)")
                n, secs = z.drain // 2, z.latency_seconds
                d = out["durability"] = w.durability(b, n, 200, secs, max(1, z.reps // 2))
                for k in (1, 2):
                    d[f"drain_ratio_{k}_to_0"] = round(
                        d[k]["drain_msgs_per_s"] / d[0]["drain_msgs_per_s"], 3
                    )
                _reset(b)
        if "footprint" in only:
            with timed(out, "footprint"):
                out["footprint"] = w.footprint(b, z.footprint)
                _reset(b)
        if "scripts" in only:
            with timed(out, "scripts"):
                out["scripts"] = scripts_ab.ab(b, size)
                _reset(b)
        if "sizes" in only:
            with timed(out, "sizes"):
                out["sizes"] = sizes.tool_result_sizes(b)
                compact, full = out["sizes"]["compact"], out["sizes"]["full"]
                out["read_chars_per_message_50"] = compact["beyond_payload_per_message_50"]
                out["read_chars_ratio_50"] = round(compact["chars_50"] / full["chars_50"], 3)
    finally:
        b.close()
    return out


def drains(b: Bench, only: set[str], z: Sizes) -> dict[str, Any]:
    """Raw and bus runs take turns, so a machine that speeds up or slows down during the run
    moves both sides of each ratio alike."""
    n, n_batch = z.drain, z.batch
    if n >= 1000:  # warm-up (not for --smoke's tiny counts, as in bench/linger.py)
        w.raw_drain(b, 200), w.bus_drain(b, 200)
    raw: list[float] = []
    runs: dict[str, list[float]] = {"drain": [], "batch": []}
    for _ in range(z.reps):
        raw.append(w.raw_drain(b, n))
        if "drain" in only:
            runs["drain"].append(w.bus_drain(b, n))
        if "batch" in only:
            runs["batch"].append(w.bus_batch_drain(b, n_batch))
    out: dict[str, Any] = {"raw_drain_msgs_per_s": summary(raw)}
    for name, samples in runs.items():
        if samples:
            out[f"{name}_msgs_per_s"] = summary(samples)
            out[f"{name}_ratio"] = round(summary(samples)["median"] / summary(raw)["median"], 3)
            out[f"{name}_ratio_per_pair"] = [
                round(x / r, 3) for x, r in zip(samples, raw, strict=True)
            ]
    return out


def latencies(b: Bench, reps: int, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rate in (200, 500):
        raw: list[float] = []
        bus: list[float] = []
        for _ in range(reps):  # alternating, as for the drains
            raw += w.raw_latency(b, rate, seconds)
            bus += w.bus_latency(b, rate, seconds)
        out[f"latency_{rate}"] = {"bus": _pcts(bus), "raw": _pcts(raw), "samples": len(bus)}
        out[f"latency_p99_ratio_{rate}"] = round(
            percentile(bus, 99) / max(percentile(raw, 99), 1e-6), 3
        )
        out.setdefault("_samples", {})[f"latency_{rate}"] = {"bus": bus, "raw": raw}
    return out


def _pcts(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": ms(percentile(values, 50)),
        "p95_ms": ms(percentile(values, 95)),
        "p99_ms": ms(percentile(values, 99)),
        "max_ms": ms(max(values)),
    }


def _reset(b: Bench) -> None:
    """Between workloads: empty queues, no keys left from the one before, a compact AOF."""
    b.fresh_redis()

    with Connection(b.broker_url) as conn:
        channel = conn.channel()
        for queue in ("bus.critical", "bus.high", "bus.normal", "bus.low"):
            try:
                channel.queue_purge(queue)
            except Exception:  # noqa: BLE001 - not declared in this run
                channel = conn.channel()


def mcp(b: Bench, z: Sizes, agent_calls: int = 0) -> dict[str, Any]:
    tokens = Path(tempfile.mkdtemp()) / "tokens.json"
    token = TokenFile(tokens).create("bench-waiter")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = b.start("workers.app", "bus.critical,bus.high,bus.normal,bus.low", "bus")
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "msgbus",
            "mcp",
            "--http",
            "--port",
            str(port),
            "--tokens-file",
            str(tokens),
        ],
        cwd=ROOT,
        env=b.env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        try:
            wait_until(up, 30, "the MCP server")
        except TimeoutError as exc:
            log.seek(0)
            raise TimeoutError(f"{exc}; its log ends:\n{log.read()[-2000:].decode()}") from exc
        b.started_and_consuming(worker, "bus.normal")
        single = w.mcp_round_trips(b, z.mcp_calls, 1, port, token)
        eight = w.mcp_round_trips(b, max(1, z.mcp_calls // 4), 8, port, token)
        wakes = w.mcp_longpoll_wake(b, z.mcp_wakes, port, token)
        # The MCP `request` tool to a worker agent, over this server (see bench.agents).
        requests = agents.mcp_round_trips(b, agent_calls, port, token) if agent_calls else None
        b.clear_keys()
        load = mcpload.compare(b, z.mcp_calls, min(z.reps, 2), worker.pid)  # 1 process, N
        return {
            "mcp": {"one_client": single, "eight_clients": eight, "longpoll_wake": _pcts(wakes)},
            "mcp_load": load.pop("rows"),
            **load,
            "mcp_longpoll_wake_p99_ms": ms(percentile(wakes, 99)),
        } | ({"agent_mcp": requests} if requests else {})
    finally:
        server.terminate()
        server.wait(10)
        log.close()
        b.stop(worker)


def table(result: dict[str, Any]) -> str:
    lines = [
        f"machine: {result['machine']}",
        f"stack: {result['stack']}; queues: {result['queue_type']}, worker "
        f"{result['worker']['pool']} x{result['worker']['concurrency']}",
    ]

    def row(name: str, value: Any) -> None:
        lines.append(f"  {name:<38} {value}")

    for key in ("raw_drain_msgs_per_s", "drain_msgs_per_s", "batch_msgs_per_s"):
        if key in result:
            s = result[key]
            row(key, f"{s['median']:.0f}  (min {s['min']:.0f}, max {s['max']:.0f})")
    for key in HEADLINE:
        if key in result:
            row(key, result[key])
    for key in (
        "producer",
        "latency_200",
        "latency_500",
        "priority",
        "mcp",
        "mcp_load",
        "agents",
        "footprint",
        "sizes",
        "costs",
        "durability",
        "scripts",
        "linger",
    ):
        if key in result:
            lines.append(f"  {key}: {json.dumps(result[key])}")
    return "\n".join(lines)


def _workloads(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--only names workloads that exist (`durability` needs --cluster's replicas)."""
    if value is None:
        return None
    unknown = sorted(set(value.split(",")) - {*ALL, "durability"})
    if unknown:
        raise click.BadParameter(f"no workload {', '.join(unknown)} (workloads: {','.join(ALL)})")
    return value


@click.command(name="msgbus bench", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json", "json_out", is_flag=True, help="print one JSON object")
@click.option("--quick", is_flag=True, help="smaller counts (about 4 minutes)")
@click.option("--smoke", is_flag=True, help="tiny counts: checks every workload runs (CI)")
@click.option("--only", default=None, callback=_workloads, help=f"comma list of {','.join(ALL)}")
@click.option("--queue-type", type=click.Choice(["classic", "quorum"]), default="classic")
@click.option(
    "--cluster",
    is_flag=True,
    help="on the local multi-node stack (quorum queues, Sentinel); adds `durability`",
)
@click.option("--concurrency", type=int, default=4)
@click.option("--pool", type=click.Choice(["threads", "prefork"]), default="threads")
@click.option("--out", type=click.Path(path_type=Path), default=Options.out)
@click.option("--plot", is_flag=True, help="also save PNG charts beside --out (matplotlib)")
def main(json_out: bool, **options: Any) -> None:
    """Benchmark the bus against raw Celery in one run."""
    args = Options(json=json_out, **options)
    if args.plot:
        plots.require_matplotlib()
    started = time.monotonic()
    result = run(args)
    result["seconds"] = round(time.monotonic() - started, 1)
    samples = result.pop("_samples", {})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    if args.plot:
        for path in plots.save_all(result, samples, args.out.parent):
            print(f"chart: {path}", file=sys.stderr)
    print(json.dumps(result) if args.json else table(result))


if __name__ == "__main__":
    main()
