"""`msgbus up` starts the whole bus, every endpoint answers, Ctrl-C leaves nothing behind."""

from __future__ import annotations

import signal
import subprocess
import sys

import psutil
import pytest

from tests.support.paths import ARTIFACTS, ROOT
from tests.support.processes import free_port
from tests.support.waiting import wait_for
from tests.support.web import http_status

pytestmark = pytest.mark.timeout(180)


def test_up_starts_everything_and_ctrl_c_stops_every_process(fresh_env, agents, tmp_path):
    mcp_port, flower_port, metrics_port = free_port(), free_port(), free_port()
    log = ARTIFACTS / f"up-{fresh_env.vhost}.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "msgbus.cli",
            "up",
            "--mcp-port",
            str(mcp_port),
            "--flower-port",
            str(flower_port),
        ],
        cwd=ROOT,
        env=fresh_env.env(
            MESSAGE_BUS_METRICS_PORT=str(metrics_port),
            MESSAGE_BUS_TOKENS_FILE=str(tmp_path / "tokens.json"),
        ),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: b"bus is up" in log.read_bytes(), 60, "msgbus up to start")
        text = log.read_text()
        for where in ("/mcp", "/ui", f":{flower_port}/", "metrics"):
            assert where in text, where
        base = f"http://127.0.0.1:{mcp_port}"
        wait_for(lambda: http_status(f"{base}/healthz") == 200, 60, "MCP /healthz")
        wait_for(lambda: http_status(f"{base}/readyz") == 200, 60, "a live worker (/readyz)")
        assert http_status(f"{base}/ui") == 401  # the login page: a token is needed
        wait_for(
            lambda: http_status(f"http://127.0.0.1:{metrics_port}/metrics") == 200,
            30,
            "worker metrics",
        )
        wait_for(
            lambda: http_status(f"http://127.0.0.1:{flower_port}/healthcheck") == 200, 60, "Flower"
        )
        bus = fresh_env.bus()
        sender, reader = agents("s"), agents("r")
        receipt = bus.send_message({"from": sender, "to": reader, "payload": "up"})
        got = wait_for(lambda: bus.read(reader, limit=1, wait=0.5), 20, "delivery via up")
        assert got[0].id == receipt.id
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 4
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(40)
    assert b"stopped" in log.read_bytes()
    leftovers = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert leftovers == [], [c.cmdline() for c in leftovers]
