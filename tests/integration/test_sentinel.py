"""Redis through Sentinel: a `redis+sentinel://` URL finds the master for the client and the
worker (a local master and sentinel the test starts)."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.processes import free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


def _ping(port: int) -> bool:
    return (
        subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).returncode == 0
    )


def test_bus_works_through_sentinel(fresh_env, tmp_path, agents):
    master, sentinel = free_port(), free_port()
    subprocess.run(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(master),
            "--daemonize",
            "yes",
            "--dir",
            str(tmp_path),
            "--save",
            "",
        ],
        check=True,
    )
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"bind 127.0.0.1\nport {sentinel}\ndaemonize yes\ndir {tmp_path}\n"
        f"sentinel monitor mymaster 127.0.0.1 {master} 1\n"
    )
    subprocess.run(["redis-server", str(conf), "--sentinel"], check=True)
    try:
        wait_for(lambda: _ping(master) and _ping(sentinel), 10, "redis and sentinel")
        fresh_env.overrides["MESSAGE_BUS_REDIS_URL"] = (
            f"redis+sentinel://127.0.0.1:{sentinel}/mymaster/0"
        )
        fresh_env.start_worker()
        bus = fresh_env.bus()
        sender, reader = agents("s"), agents("r")
        receipt = bus.send_message({"from": sender, "to": reader, "payload": "via sentinel"})
        [message] = wait_for(lambda: bus.read(reader, limit=1, wait=0.5), 15, "delivery")
        assert message.id == receipt.id
        keys = subprocess.run(
            ["redis-cli", "-p", str(master), "--scan", "--pattern", f"{fresh_env.prefix}*"],
            capture_output=True,
            text=True,
        ).stdout
        assert f"{fresh_env.prefix}status:{receipt.id}" in keys
    finally:
        for port in (sentinel, master):
            subprocess.run(
                ["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True
            )
