"""Processes and ports of a test: a spawned bus process, the example echo agent, a private
Redis, a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.paths import ARTIFACTS, ROOT
from tests.support.waiting import wait_for


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(
    env: Any, name: str, args: list[str], **extra: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """`python ARGS` with the env's settings, its stderr in test-artifacts/NAME-VHOST.log."""
    log = ARTIFACTS / f"{name}-{env.vhost}.log"
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=env.env(**extra),
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        start_new_session=True,
    )
    return proc, log


def start_echo_agent(
    env: Any, name: str, target: str = "examples.echo_agent:agent"
) -> tuple[subprocess.Popen[bytes], Path]:
    """examples/echo_agent.py (or `target`) run by `msgbus agent run` for the env's bus (its
    stderr in test-artifacts/NAME-VHOST.log), returned once it logs that it is ready."""
    proc, log = spawn(env, name, ["-m", "msgbus", "agent", "run", target])
    wait_for(lambda: b"ready." in log.read_bytes() or proc.poll() is not None, 60, "the agent")
    assert proc.poll() is None, log.read_text()[-2000:]
    return proc, log


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


class PrivateRedis:
    """A Redis of one test's own on a spare loopback port (AOF on), to stop and restart."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port, self.dir = port, directory
        self.url = f"redis://127.0.0.1:{port}/0"

    def start(self) -> None:
        subprocess.run(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--daemonize",
                "yes",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--pidfile",
                str(self.dir / "redis.pid"),
            ],
            check=True,
        )
        wait_for(self.answers, 10, f"redis on {self.port}")

    def answers(self) -> bool:
        ping = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True)
        return ping.returncode == 0

    def kill9(self) -> None:
        os.kill(int((self.dir / "redis.pid").read_text()), signal.SIGKILL)

    def stop(self, *, graceful: bool = False) -> None:
        command = ["shutdown"] if graceful else ["shutdown", "nosave"]
        subprocess.run(["redis-cli", "-p", str(self.port), *command], capture_output=True)


def msgbus(
    env: Any, *args: str, stdin: str | None = None, **settings: str
) -> subprocess.CompletedProcess[str]:
    """The `msgbus` command line run for the env's bus (extra MESSAGE_BUS_* settings, or
    other variables, as keywords); its exit code and output, never raising."""
    return subprocess.run(
        [sys.executable, "-m", "msgbus", *args],
        cwd=ROOT,
        env=env.env(**settings),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
