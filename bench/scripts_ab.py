"""Script runner A/B (`msgbus bench --only scripts`): the hot scripts through each backend
of bus.scripts.ScriptRunner, interleaved in one run.

Per round and backend: `calls` admissions (ADMIT, one direct message each), the deliveries
of those messages (DELIVER), as many reads of one message (READ), then `calls` deliveries
from 4 threads at once (the worker's default pool, where GIL hand-offs around socket system
calls cost most). Each goes through the real call sites (Admission, RedisStore) on a
runner given that backend; a fresh reader per round keeps every inbox far from its caps.
Rounds alternate which backend goes first, so a machine that speeds up or slows down moves
both alike. Figures: wall and CPU (this process) µs per call, medians over the rounds, and
socket/pool ratios (under 1: the socket backend is cheaper).
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from bench.harness import Bench
from bus.admission import AcceptRecord, Admission
from bus.delivery_calls import Delivery
from bus.scripts import runner as script_runner
from bus.scripts.runner import BACKENDS, ScriptRunner
from bus.store import RedisStore

# (rounds, calls per script and round)
COUNTS = {"full": (8, 2000), "quick": (4, 800), "smoke": (1, 10)}
PHASES = ("admit", "deliver", "read", "deliver_4_threads")
SENDER = "ab-sender"
WIRE = '{"id":"%s","from":"ab-sender","to":"%s","payload":{"text":"' + "x" * 1024 + '"}}'


class Side:
    """The bus's Redis call sites on a runner with one backend."""

    def __init__(self, b: Bench, backend: str) -> None:
        bus = b.bus()
        rt = bus.runtime
        self.bus = bus
        runner = ScriptRunner(rt.redis, rt.replication, BACKENDS[backend](rt.redis))
        self.store = RedisStore(rt.redis, rt.keys, rt.retention, rt.clock, scripts=runner)
        self.admission = Admission(rt.redis, rt.keys, rt.retention, rt.clock, scripts=runner)
        self.clock = rt.clock

    def round(self, calls: int) -> dict[str, tuple[float, float]]:
        reader = f"ab-{uuid.uuid4().hex[:8]}"
        records = [self._record(reader) for _ in range(calls)]
        deliveries = [self._delivery(r.id, reader) for r in records]
        more = [self._delivery(f"ab-{uuid.uuid4().hex}", reader) for _ in range(calls)]
        return {
            "admit": _timed(calls, lambda: [self.admission.admit([r], [{}]) for r in records]),
            "deliver": _timed(calls, lambda: [self.store.deliver(d) for d in deliveries]),
            "read": _timed(calls, lambda: [self.store.lease(reader, 1, 60) for _ in records]),
            "deliver_4_threads": _timed(calls, lambda: _threads(4, self.store.deliver, more)),
        }

    def _record(self, reader: str) -> AcceptRecord:
        message_id = uuid.uuid4().hex
        return AcceptRecord(
            id=message_id,
            dedup_key=message_id,
            sender=SENDER,
            queue="bus.normal",
            wire=WIRE % (message_id, reader),
            ts_ms=self.clock.now_ms(),
            expires_ms=None,
            to=reader,
            declared=True,
            recipients=(reader,),
        )

    def _delivery(self, message_id: str, reader: str) -> Delivery:
        wire = WIRE % (message_id, reader)
        return Delivery(message_id, wire, 2, self.clock.now_ms(), [reader], 1, None, SENDER)

    def close(self) -> None:
        self.bus.close()


def ab(b: Bench, size: str) -> dict[str, Any]:
    rounds, calls = COUNTS[size]
    sides = {name: Side(b, name) for name in BACKENDS}
    try:
        for side in sides.values():
            side.round(min(calls, 50))  # warm-up: connections, loaded scripts, caches
        samples: dict[str, dict[str, list[tuple[float, float]]]] = {
            name: {phase: [] for phase in PHASES} for name in sides
        }
        order = list(sides)
        for _ in range(rounds):
            for name in order:
                for phase, figures in sides[name].round(calls).items():
                    samples[name][phase].append(figures)
            order.reverse()
    finally:
        for side in sides.values():
            side.close()
    return _report(samples, rounds, calls)


def _report(
    samples: dict[str, dict[str, list[tuple[float, float]]]], rounds: int, calls: int
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rounds": rounds,
        "calls": calls,
        "in_use": next(n for n, cls in BACKENDS.items() if cls is script_runner.BACKEND),
    }
    for name, phases in samples.items():
        out[name] = {
            phase: {
                "wall_us": round(statistics.median(w for w, _ in runs), 1),
                "cpu_us": round(statistics.median(c for _, c in runs), 1),
            }
            for phase, runs in phases.items()
        }
    for figure in ("cpu_us", "wall_us"):
        out[f"{figure}_ratio_socket_to_pool"] = {
            phase: round(out["socket"][phase][figure] / max(out["pool"][phase][figure], 1e-9), 3)
            for phase in PHASES
        }
    # Each round's socket figure over the pool figure measured next to it.
    out["cpu_ratio_per_round"] = {
        phase: [
            round(s[1] / max(p[1], 1e-9), 3)
            for s, p in zip(samples["socket"][phase], samples["pool"][phase], strict=True)
        ]
        for phase in PHASES
    }
    return out


def _timed(calls: int, fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall µs, CPU µs) per call of `fn`'s `calls` calls."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return (
        (time.perf_counter() - wall) / calls * 1e6,
        (time.process_time() - cpu) / calls * 1e6,
    )


def _threads(count: int, fn: Callable[[Any], Any], items: list[Any]) -> None:
    threads = [
        threading.Thread(target=lambda part=items[i::count]: [fn(x) for x in part])
        for i in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
