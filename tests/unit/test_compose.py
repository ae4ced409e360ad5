"""docker-compose.yml is valid and has the production shape (no engine runs here, so the
compose tool's own `config` validates it)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from tests.support.paths import ROOT

SERVICES = {"redis", "rabbitmq", "worker", "express", "beat", "flower", "mcp"}


def compose_command() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail(
        "neither `docker compose` nor `docker-compose` is installed "
        "(scripts/test.sh installs docker-compose)"
    )


def test_compose_file_validates_with_the_compose_tool():
    env = {"PATH": "/usr/bin:/bin"}  # no secret needed to validate, or to start redis alone
    out = subprocess.run(
        [*compose_command(), "-f", "docker-compose.yml", "config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(out.stdout)
    assert set(config["services"]) == SERVICES


def test_redis_keeps_an_append_only_file_and_never_evicts():
    config = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = config["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_every_published_port_is_bound_to_loopback():
    config = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    ports = [p for s in config["services"].values() for p in s.get("ports", [])]
    assert ports and all(p.startswith("127.0.0.1:") for p in ports), json.dumps(ports)
