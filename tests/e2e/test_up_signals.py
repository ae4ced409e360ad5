"""`msgbus up` owns its children: however the supervisor ends (Ctrl-C with its output piped
to `tee`, SIGTERM, a hangup, kill -9), no process of the stack survives it, its ports are
free, and a second `msgbus up` on the same ports then starts and serves."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.support.paths import ARTIFACTS, ROOT
from tests.support.processes import free_port
from tests.support.waiting import settled, wait_for
from tests.support.web import http_status

pytestmark = pytest.mark.timeout(900)  # one run of five stacks ended and six started


class Up:
    """One `msgbus up` run in a process group of its own, as a terminal runs a job."""

    def __init__(
        self, env, tmp_path: Path, ports: dict[str, int], *, tee: bool, mcp_processes: int = 1
    ) -> None:
        self.ports = ports
        ARTIFACTS.mkdir(exist_ok=True)
        self.log = ARTIFACTS / f"up-signals-{env.vhost}-{time.monotonic_ns()}.log"
        self.log.write_bytes(b"")
        command = [
            sys.executable,
            "-m",
            "msgbus.cli",
            "up",
            "--mcp-port",
            str(ports["mcp"]),
            "--flower-port",
            str(ports["flower"]),
        ]
        environment = env.env(
            MESSAGE_BUS_METRICS_PORT=str(ports["metrics"]),
            MESSAGE_BUS_TOKENS_FILE=str(tmp_path / "tokens.json"),
            MESSAGE_BUS_MCP_PROCESSES=str(mcp_processes),
        )
        if tee:
            shell = f"{shlex.join(command)} 2>&1 | tee {shlex.quote(str(self.log))}"
            self.group = subprocess.Popen(
                ["bash", "-c", shell],
                cwd=ROOT,
                env=environment,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        else:
            self.group = subprocess.Popen(
                command,
                cwd=ROOT,
                env=environment,
                stdout=self.log.open("wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.supervisor = wait_for(self._supervisor, 30, "the msgbus up process")
        self.stack: list[psutil.Process] = []

    def _supervisor(self) -> psutil.Process | None:
        group = psutil.Process(self.group.pid)
        for proc in [group, *group.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                if "up" in proc.cmdline() and "msgbus.cli" in proc.cmdline():
                    return proc
        return None

    def wait_serving(self) -> None:
        wait_for(lambda: b"bus is up" in self.log.read_bytes(), 90, "msgbus up to start")
        base = f"http://127.0.0.1:{self.ports['mcp']}"
        wait_for(lambda: http_status(f"{base}/healthz") == 200, 90, "MCP /healthz")
        wait_for(lambda: http_status(f"{base}/readyz") == 200, 90, "a live worker (/readyz)")
        flower = f"http://127.0.0.1:{self.ports['flower']}/healthcheck"
        wait_for(lambda: http_status(flower) == 200, 90, "Flower")
        self.stack = self.supervisor.children(recursive=True)
        listener = listening_pid(self.ports["mcp"])
        assert listener in {p.pid for p in self.stack}, "the MCP port is served by another stack"

    def survivors(self) -> list[psutil.Process]:
        alive = []
        for proc in [self.supervisor, *self.stack]:
            with contextlib.suppress(psutil.Error):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
        return alive

    def clean_up(self) -> None:
        """Whatever of this run is still there (a failed case), ended by its pid."""
        for proc in self.survivors():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.group.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.group.wait(10)


def listening_pid(port: int) -> int | None:
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
            return conn.pid
    return None


def describe(procs: list[psutil.Process]) -> list[str]:
    out = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            out.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
    return out


def ctrl_c(up: Up) -> None:
    os.killpg(up.group.pid, signal.SIGINT)  # what the terminal does: the whole job


def sigterm(up: Up) -> None:
    up.supervisor.send_signal(signal.SIGTERM)


def hangup(up: Up) -> None:
    os.killpg(up.group.pid, signal.SIGHUP)  # the terminal went away


def kill9(up: Up) -> None:
    up.supervisor.send_signal(signal.SIGKILL)


# Each way of ending a stack, in the order they are run: each ends the stack the previous
# one's "up starts again" started (on the same ports), so every ending is followed by a
# fresh start, and the last stack is stopped with Ctrl-C.
CASES = [
    ("ctrl-c with output piped to tee", ctrl_c, True, 1),
    ("sigterm", sigterm, False, 1),
    ("sighup", hangup, False, 1),
    ("kill -9 of the supervisor", kill9, False, 1),
    ("kill -9 of the supervisor, the MCP server in 2 processes", kill9, False, 2),
]


def ended(up: Up, case: str, end: Callable[[Up], None], ports: dict[str, int]) -> None:
    """Ends `up` the way `case` does; no process of it survives and its ports are free."""
    end(up)
    settled(lambda: not up.survivors(), 45)
    left = up.survivors()
    busy = {name: port for name, port in ports.items() if listening_pid(port)}
    assert left == [] and busy == {}, (
        f"after {case}: still running {describe(left)}; ports still served {busy}"
    )


def test_no_process_of_the_stack_survives_its_supervisor_and_up_starts_again(fresh_env, tmp_path):
    ports = {"mcp": free_port(), "flower": free_port(), "metrics": free_port()}
    started: list[Up] = []

    def start(tee: bool, processes: int) -> Up:
        up = Up(fresh_env, tmp_path, ports, tee=tee, mcp_processes=processes)
        started.append(up)
        up.wait_serving()
        return up

    try:
        for k, (case, end, tee, processes) in enumerate(CASES):
            up = started[-1] if started else start(tee, processes)
            assert len(up.stack) >= 4 + processes - 1, describe(up.stack)
            ended(up, case, end, ports)
            # Up starts again on the same ports, and serves (as the next case needs it).
            start(False, CASES[k + 1][3] if k + 1 < len(CASES) else processes)
        last = started[-1]
        last.supervisor.send_signal(signal.SIGINT)
        wait_for(lambda: not last.survivors(), 45, "the last stack to stop")
    finally:
        for up in started:
            up.clean_up()
