"""msgbus.services against the real local servers: reuse, idempotence, vhosts, and a cold
start + stop of a second pair on spare ports (bound to 127.0.0.1 only)."""

from __future__ import annotations

import shutil
import socket
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import redis
from amqp.exceptions import NotAllowed
from kombu import Connection

from msgbus.services import (
    ServicesError,
    delete_vhost,
    ensure_vhost,
    services_down,
    services_status,
    services_up,
)
from tests.support.paths import BROKER_URL, REDIS_URL

pytestmark = pytest.mark.timeout(300)


def _connect(url: str) -> None:
    with Connection(url, connect_timeout=5) as conn:
        conn.ensure_connection(max_retries=1)
        conn.default_channel.queue_declare(queue="probe", auto_delete=True)


def test_up_reuses_running_servers_and_is_idempotent(services):
    started = time.monotonic()
    first = services_up(REDIS_URL, BROKER_URL)
    second = services_up(REDIS_URL, BROKER_URL)
    assert time.monotonic() - started < 10
    assert [(s.name, s.running) for s in first] == [("redis", True), ("rabbitmq", True)]
    assert [(s.name, s.running, s.managed) for s in second] == [
        (s.name, s.running, s.managed) for s in first
    ]
    assert all("already running" in s.detail for s in second)
    assert "guest:***@" in second[1].url  # the password is not echoed


def test_status_reports_both_running(services):
    statuses = services_status(REDIS_URL, BROKER_URL)
    assert [(s.name, s.running) for s in statuses] == [("redis", True), ("rabbitmq", True)]


def test_down_never_stops_servers_it_did_not_start(services, tmp_path):
    # A state dir that started nothing: the running servers are someone else's.
    assert [s.managed for s in services_status(REDIS_URL, BROKER_URL, tmp_path)] == [False] * 2
    assert services_down(tmp_path) == []
    assert all(s.running for s in services_status(REDIS_URL, BROKER_URL))


def test_unreachable_remote_server_is_an_error_not_a_start(tmp_path):
    with pytest.raises(ServicesError, match="does not answer"):
        services_up("redis://127.0.0.2:1/0", BROKER_URL, tmp_path, timeout=5)


# The management API refuses a wrong password; rabbitmqctl does the work instead.
_parts = urlsplit(BROKER_URL)
NO_API = _parts._replace(
    netloc=f"{_parts.username or 'guest'}:not-the-password@{_parts.hostname}:{_parts.port or 5672}"
).geturl()


@pytest.mark.parametrize("admin_url", [BROKER_URL, NO_API], ids=["management API", "rabbitmqctl"])
def test_ensure_vhost_gives_a_connectable_vhost_and_delete_removes_it(services, admin_url):
    vhost = f"t-services-{uuid.uuid4().hex[:8]}"
    url = BROKER_URL.rstrip("/") + "/" + vhost
    ensure_vhost(admin_url, vhost)
    try:
        ensure_vhost(admin_url, vhost)  # already exists: fine
        _connect(url)
    finally:
        delete_vhost(admin_url, vhost)
    delete_vhost(admin_url, vhost)  # already gone: fine
    with pytest.raises(NotAllowed):
        _connect(url)


def _spare_port() -> int:
    """A port p with p, p + 10000 (management) and p + 20000 (distribution) all free."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port > 45000:
            continue
        free = True
        for candidate in (port, port + 10000, port + 20000):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", candidate))
                except OSError:
                    free = False
        if free:
            return port
    raise RuntimeError("no spare port")


def _listeners(pid: int) -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


def test_cold_start_binds_loopback_only_and_down_stops_it(tmp_path):
    redis_port, amqp_port = _spare_port(), _spare_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    broker_url = f"amqp://guest:guest@127.0.0.1:{amqp_port}//"
    state: Path = tmp_path / "state"
    try:
        statuses = services_up(redis_url, broker_url, state, timeout=120)
        assert [(s.name, s.running, s.managed) for s in statuses] == [
            ("redis", True, True),
            ("rabbitmq", True, True),
        ]
        assert redis.Redis.from_url(redis_url).ping()
        _connect(broker_url)
        for status in statuses:
            pid = int(status.detail.rsplit("pid ", 1)[1])
            listeners = _listeners(pid)
            assert listeners and {ip for ip, _ in listeners} == {"127.0.0.1"}, listeners
        again = time.monotonic()
        assert all(s.managed for s in services_up(redis_url, broker_url, state))
        assert time.monotonic() - again < 10
        # vhost helpers find this node (not the default one) from the state dir.
        ensure_vhost(broker_url, "cold", state)
        _connect(broker_url.rstrip("/") + "/cold")
    finally:
        node_file = state / "rabbitmq" / "node"
        base = Path(node_file.read_text().split("\n")[1]) if node_file.exists() else None
        stopped = services_down(state)
        if base and base != state / "rabbitmq":
            shutil.rmtree(base, ignore_errors=True)
    assert [(s.name, s.running) for s in stopped] == [("redis", False), ("rabbitmq", False)]
    assert not any(s.running for s in services_status(redis_url, broker_url, state))
