"""`msgbus up`: the whole bus on one machine, supervised.

Starts Redis and RabbitMQ when nothing listens, then a delivery worker, beat, the MCP HTTP
server (with /ui, /metrics, /healthz) and Flower as child processes. A child that dies is
restarted with backoff; Ctrl-C (or SIGTERM) stops them all and waits for them.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from bus.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    argv: list[str]
    where: str
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0

    def start(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(self.argv, env=env, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.alive():
            assert self.proc is not None
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass


def plan(settings: Settings, host: str, mcp_port: int, flower_port: int) -> list[Child]:
    py = sys.executable
    children = [
        Child(
            "worker",
            [py, "-m", "bus.cli", "worker"],
            f"delivery on bus.critical/high/normal/low; metrics http://127.0.0.1:"
            f"{settings.metrics_port}/metrics"
            if settings.metrics_port
            else "delivery",
        ),
        Child(
            "express",
            [py, "-m", "bus.cli", "worker", "--express"],
            "bus.critical and bus.high first (consumer priority), never behind a backlog",
        ),
        Child(
            "beat", [py, "-m", "bus.cli", "beat"], "scheduled replay, purge and queue-stats jobs"
        ),
        Child(
            "mcp",
            [py, "-m", "mcp_server", "--http", "--host", host, "--port", str(mcp_port)],
            f"MCP http://{host}:{mcp_port}/mcp  dashboard http://{host}:{mcp_port}/ui  "
            f"metrics http://{host}:{mcp_port}/metrics",
        ),
    ]
    if flower_port:
        children.append(
            Child(
                "flower",
                [py, "-m", "bus.cli", "flower", "--address", host, "--port", str(flower_port)],
                f"Flower http://{host}:{flower_port}/",
            )
        )
    return children


def run(
    host: str = "127.0.0.1",
    mcp_port: int = 8765,
    flower_port: int = 5555,
    start_services: bool = True,
) -> int:
    settings = Settings()
    settings.signing_keys  # noqa: B018 - a production bus without a secret stops here
    if start_services:
        from bus.services import services_up

        for status in services_up(settings.redis_url, settings.broker_url):
            print(f"  {status.name:8} {status.url}", flush=True)
    children = plan(settings, host, mcp_port, flower_port)
    env = dict(os.environ)
    if flower_port:
        env.setdefault("MESSAGE_BUS_TASK_EVENTS", "true")  # so Flower sees queued tasks too
    for child in children:
        child.start(env)
        print(f"  {child.name:8} {child.where}", flush=True)
    print("bus is up; Ctrl-C stops everything", flush=True)

    stopping = False

    def stop_all(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)
    while not stopping:
        now = time.monotonic()
        for child in children:
            if child.alive():
                continue
            if not child.next_start:
                assert child.proc is not None
                backoff = min(30.0, 2.0 ** min(child.restarts, 5))
                child.next_start, child.restarts = now + backoff, child.restarts + 1
                print(
                    f"  {child.name} exited ({child.proc.returncode}); "
                    f"restarting in {backoff:.0f}s",
                    flush=True,
                )
            elif now >= child.next_start:
                child.next_start = 0.0
                child.start(env)
        time.sleep(0.2)

    print("stopping...", flush=True)
    for child in children:
        child.stop(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for child in children:
        if child.proc is not None:
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.stop(signal.SIGKILL)
                child.proc.wait(5)
    print("stopped", flush=True)
    return 0
