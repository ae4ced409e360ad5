"""An attacker's view of the operator's side: secrets on command lines (`ps` shows every
process's argv to every user) and production mode with a secret too short to be one. Real
processes started through `msgbus`, as an operator starts them."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid

import httpx
import psutil
import pytest

from msgbus.services import run_rabbitmqctl
from tests.support.paths import ARTIFACTS, BROKER_URL, ROOT, TEST_SECRET
from tests.support.processes import free_port, msgbus, spawn, stop
from tests.support.waiting import wait_for
from tests.support.web import http_status

pytestmark = pytest.mark.timeout(180)

GOOD_SECRET = "s" * 40
assert len(TEST_SECRET) >= 32  # what the test workers sign with: long enough


def rabbitmqctl(*args):
    ok, output = run_rabbitmqctl(BROKER_URL, None, *args)
    assert ok, output
    return output


@pytest.fixture
def broker_user(module_env):
    """A RabbitMQ user of the test's own, whose password appears nowhere else."""
    user, password = f"flower-{uuid.uuid4().hex[:8]}", f"brokerpw-{uuid.uuid4().hex}"
    rabbitmqctl("add_user", user, password)
    try:
        rabbitmqctl("set_user_tags", user, "management")
        rabbitmqctl("set_permissions", "-p", module_env.vhost, user, ".*", ".*", ".*")
        yield user, password
    finally:
        rabbitmqctl("delete_user", user)


def command_lines_holding(*needles):
    """Every process on this machine whose argv contains one of `needles`."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        line = " ".join(proc.info.get("cmdline") or ())
        if any(needle in line for needle in needles):
            found.append((proc.info["pid"], line))
    return found


def test_flower_gets_its_password_and_the_broker_password_through_its_environment_only(
    module_env, broker_user
):
    user, broker_password = broker_user
    flower_password = f"flowerpw-{uuid.uuid4().hex}"
    port = free_port()
    broker_url = f"amqp://{user}:{broker_password}@127.0.0.1:5672/{module_env.vhost}"
    flower, log = spawn(
        module_env,
        "flower-secrets",
        ["-m", "msgbus", "flower", "--port", str(port)],
        MESSAGE_BUS_FLOWER_AUTH=f"ops:{flower_password}",
        MESSAGE_BUS_BROKER_URL=broker_url,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_status(f"{base}/healthcheck") in (200, 401), 60, "Flower")
        # Flower has the password (it enforces it) and reaches the broker with its user.
        assert httpx.get(f"{base}/workers", timeout=10).status_code == 401
        authed = httpx.get(f"{base}/workers", auth=("ops", flower_password), timeout=10)
        assert authed.status_code == 200
        assert flower.poll() is None
        leaks = command_lines_holding(flower_password, broker_password)
        assert leaks == [], leaks
        env = psutil.Process(flower.pid).environ()
        assert env.get("FLOWER_BASIC_AUTH") == f"ops:{flower_password}"
    finally:
        stop(flower)
    assert flower_password not in log.read_text() and broker_password not in log.read_text()


# -- production mode and short secrets ----------------------------------------------------------


def start(env, name, args, **settings):
    log = ARTIFACTS / f"{name}-{env.vhost}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "msgbus", *args],
        cwd=ROOT,
        env=env.env(**settings),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        start_new_session=True,
    )
    return proc, log


ENTRANCES = {
    "msgbus mcp (stdio)": ["mcp", "--agent", "alice"],
    "msgbus mcp --http": ["mcp", "--http", "--port", "0"],
    "msgbus worker": ["worker", "-c", "1"],
    "msgbus beat": ["beat"],
    "msgbus agent run": ["agent", "run", "examples.echo_agent:agent"],
    "msgbus dashboard": ["dashboard", "--port", "0"],
}


def test_every_entrance_refuses_to_start_in_production_with_a_short_secret(module_env):
    short = {"MESSAGE_BUS_MODE": "production", "MESSAGE_BUS_SECRET": "x"}
    started = {
        name: start(module_env, f"prod-{i}", args, MESSAGE_BUS_METRICS_PORT="0", **short)
        for i, (name, args) in enumerate(ENTRANCES.items())
    }
    # Each refuses in ~2 s alone; six starting at once beside a loaded suite take longer.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and any(p.poll() is None for p, _ in started.values()):
        time.sleep(0.2)
    outcome = {}
    for name, (proc, log) in started.items():
        running = proc.poll() is None
        if running:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        text = log.read_text()
        said = "is 1 characters; production mode needs at least 32" in text
        outcome[name] = (
            "refused"
            if not running and proc.returncode != 0 and said
            else (
                f"still running after 90 s, said: {text[-200:]!r}"
                if running
                else f"exit {proc.returncode}, said: {text[-200:]!r}"
            )
        )
    # The one-shot commands too.
    sent = msgbus(module_env, "send", "--from", "a", "--to", "b", "--payload", "1", **short)
    said = "is 1 characters; production mode needs at least 32" in sent.stderr
    outcome["msgbus send"] = "refused" if sent.returncode != 0 and said else sent.stderr
    rotated = msgbus(
        module_env,
        "send",
        "--from",
        "a",
        "--to",
        "b",
        "--payload",
        "1",
        MESSAGE_BUS_MODE="production",
        MESSAGE_BUS_SECRET_KEYS=f"k2:{GOOD_SECRET},k1:old",
    )
    assert rotated.returncode != 0 and "the secret of key 'k1' is 3 characters" in rotated.stderr
    started_anyway = {name: o for name, o in outcome.items() if o != "refused"}
    assert not started_anyway, "\n".join(f"{n}: {o}" for n, o in started_anyway.items())


def test_production_mode_with_a_long_secret_sends_and_serves(module_env, worker, agents):
    good = {"MESSAGE_BUS_MODE": "production", "MESSAGE_BUS_SECRET": TEST_SECRET}
    sent = msgbus(module_env, "send", "--from", agents("a"), "--to", agents("b"), "--json", **good)
    assert sent.returncode == 0 and '"status":"queued"' in sent.stdout, sent.stderr
    port = free_port()
    proc, log = spawn(
        module_env, "prod-http", ["-m", "msgbus", "mcp", "--http", "--port", str(port)], **good
    )
    try:
        wait_for(
            lambda: (
                proc.poll() is not None or http_status(f"http://127.0.0.1:{port}/healthz") == 200
            ),
            30,
            "the HTTP server in production mode",
        )
        assert proc.poll() is None, log.read_text()[-1000:]
    finally:
        stop(proc)
