"""`msgbus up`: the whole bus on one machine, supervised.

Starts Redis and RabbitMQ when nothing listens, then a delivery worker, an express worker,
beat, the MCP HTTP server (with /ui, /metrics, /healthz) and Flower as child processes, and
says "up" only once every one of them is ready. The children never outlive it, whatever
stops it: Ctrl-C (also with its output piped into a program that dies first), SIGTERM,
SIGHUP, its own crash (every exit path stops them), or kill -9 (each child asks the kernel
for SIGTERM when its parent dies: PR_SET_PDEATHSIG). A port that is taken is a clear error
before anything starts; a child that dies after start-up is restarted with backoff.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from bus.errors import ConfigError
from bus.ports import bind_refusal
from bus.settings import Settings
from msgbus.services import services_up

logger = logging.getLogger(__name__)

READY_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def say(text: str) -> None:
    """A status line on stdout. Never fatal: when the reader of a pipe has gone (Ctrl-C
    killed `tee` first), the supervisor must still stop its children."""
    try:
        print(text, flush=True)
    except (BrokenPipeError, OSError):
        try:  # further writes (and the interpreter's own flush at exit) go nowhere
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass


def _die_with_parent(parent: int) -> Callable[[], None]:
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

    def preexec() -> None:  # runs in the child between fork and exec
        os.setsid()  # its own session: the terminal's Ctrl-C reaches only the supervisor
        if libc is not None:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the supervisor died before the line above
            os._exit(1)

    return preexec


@dataclass
class Child:
    name: str
    argv: list[str]
    where: str
    ready: Callable[[Child], bool]
    ready_file: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    env: dict[str, str] = field(default_factory=dict)

    def start(self, env: dict[str, str]) -> None:
        env = env | self.env
        if self.ready_file is not None:
            self.ready_file.unlink(missing_ok=True)
            env["MESSAGE_BUS_READY_FILE"] = str(self.ready_file)
        self.proc = subprocess.Popen(self.argv, env=env, preexec_fn=_die_with_parent(os.getpid()))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass


def _file_ready(child: Child) -> bool:
    return child.ready_file is not None and child.ready_file.exists()


def _port_answers(host: str, port: int) -> Callable[[Child], bool]:
    def check(_: Child) -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    return check


def check_port_free(host: str, port: int, what: str, option: str) -> None:
    """Refuses a taken port before anything starts (the child would only loop on it)."""
    refusal = bind_refusal(host, port)
    if refusal is not None:
        raise ConfigError(
            f"port {port} on {host} ({what}) is in use ({refusal.strerror}): is another "
            f"`msgbus up` running? Stop it, or pick another port with {option}",
            port=port,
        )


def plan(
    settings: Settings, host: str, mcp_port: int, flower_port: int, ready_dir: Path
) -> list[Child]:
    py = sys.executable
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    metrics = (
        f"; metrics http://127.0.0.1:{settings.metrics_port}/metrics"
        if settings.metrics_port
        else ""
    )
    children = [
        Child(
            "worker",
            [py, "-m", "msgbus", "worker"],
            f"delivery on bus.critical/high/normal/low{metrics}",
            _file_ready,
            ready_dir / "worker",
        ),
        Child(
            "express",
            [py, "-m", "msgbus", "worker", "--express"],
            "bus.critical and bus.high first (consumer priority), never behind a backlog",
            _file_ready,
            ready_dir / "express",
        ),
        Child(
            "beat",
            [py, "-m", "msgbus", "beat"],
            "scheduled replay, purge and queue-stats jobs",
            _file_ready,
            ready_dir / "beat",
        ),
        Child(
            "mcp",
            [py, "-m", "msgbus", "mcp", "--http", "--host", host, "--port", str(mcp_port)],
            f"MCP http://{host}:{mcp_port}/mcp  dashboard http://{host}:{mcp_port}/ui  "
            f"metrics http://{host}:{mcp_port}/metrics",
            _port_answers(connect_host, mcp_port),
        ),
    ]
    if flower_port:
        children.append(
            Child(
                "flower",
                [py, "-m", "msgbus", "flower", "--address", host, "--port", str(flower_port)],
                f"Flower http://{host}:{flower_port}/",
                _port_answers(connect_host, flower_port),
            )
        )
    return children


class Supervisor:
    def __init__(self, children: list[Child], env: dict[str, str]) -> None:
        self.children = children
        self.env = env
        self.stopping = False

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def start_all(self) -> None:
        for child in self.children:
            child.start(self.env)
            say(f"  {child.name:8} {child.where}")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until every child is ready; a child that exits first is an error naming it."""
        deadline = time.monotonic() + timeout
        waiting = list(self.children)
        while waiting and not self.stopping:
            for child in list(waiting):
                if not child.alive():
                    code = child.proc.returncode if child.proc else None
                    raise ConfigError(
                        f"{child.name} exited with code {code} before it was ready "
                        "(its output is above); nothing is left running"
                    )
                if child.ready(child):
                    waiting.remove(child)
            if time.monotonic() > deadline:
                names = ", ".join(c.name for c in waiting)
                raise ConfigError(f"not ready after {timeout:.0f}s: {names} (output above)")
            time.sleep(0.1)

    def watch(self) -> None:
        """Restarts a child that dies, with backoff, until asked to stop."""
        while not self.stopping:
            now = time.monotonic()
            for child in self.children:
                if child.alive():
                    continue
                if not child.next_start:
                    assert child.proc is not None
                    backoff = min(30.0, 2.0 ** min(child.restarts, 5))
                    child.next_start, child.restarts = now + backoff, child.restarts + 1
                    say(
                        f"  {child.name} exited ({child.proc.returncode}); "
                        f"restarting in {backoff:.0f}s"
                    )
                elif now >= child.next_start:
                    child.next_start = 0.0
                    child.start(self.env)
            time.sleep(0.2)

    def stop_all(self) -> None:
        for child in self.children:
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.signal(signal.SIGKILL)
                child.proc.wait(5)


def run(
    host: str = "127.0.0.1",
    mcp_port: int = 8765,
    flower_port: int = 5555,
    start_services: bool = True,
) -> int:
    settings = Settings()
    settings.signing_keys  # noqa: B018 - a production bus without a secret stops here
    check_port_free(host, mcp_port, "the MCP HTTP server", "--mcp-port")
    if flower_port:
        check_port_free(host, flower_port, "Flower", "--flower-port")
    if start_services:
        for status in services_up(settings.redis_url, settings.broker_url):
            say(f"  {status.name:8} {status.url}")
    env = dict(os.environ)
    if flower_port:
        env.setdefault("MESSAGE_BUS_TASK_EVENTS", "true")  # so Flower sees queued tasks too
    with tempfile.TemporaryDirectory(prefix="msgbus-up-") as ready_dir:
        supervisor = Supervisor(plan(settings, host, mcp_port, flower_port, Path(ready_dir)), env)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, supervisor.on_signal)
        try:
            supervisor.start_all()
            supervisor.wait_ready()
            if not supervisor.stopping:
                say("bus is up; Ctrl-C stops everything")
            supervisor.watch()
        finally:  # every way out, a crash of our own included
            say("stopping...")
            supervisor.stop_all()
            say("stopped")
    return 0
