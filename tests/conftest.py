"""Shared fixtures: real Redis and RabbitMQ, isolated per test module by a vhost and a key
prefix, and real `celery worker` processes that drain and stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
REDIS_URL = os.environ.get("MESSAGE_BUS_REDIS_URL", "redis://127.0.0.1:6379/0")
BROKER_URL = os.environ.get("MESSAGE_BUS_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
TEST_SECRET = "test-secret-" + "x" * 20
POLL_INTERVAL = 0.05


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-long",
        action="store_true",
        help="run the long failure-injection versions (5,000-message bursts)",
    )


@pytest.fixture
def burst(request: pytest.FixtureRequest) -> int:
    """Messages per failure-injection burst: 2,000, or 5,000 with --chaos-long."""
    return 5000 if request.config.getoption("--chaos-long") else 2000


@pytest.fixture
def long_run(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--chaos-long"))


OPT_IN_MARKERS = ("interactive_channel",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Opt-in tests run only when `-m` names their marker; otherwise they are deselected."""
    chosen = config.getoption("markexpr", "") or ""
    wanted = [m for m in OPT_IN_MARKERS if m not in chosen]
    if not wanted:
        return
    keep = [i for i in items if not any(i.get_closest_marker(m) for m in wanted)]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 15.0,
    what: str = "condition",
    interval: float = 0.02,
) -> Any:
    """Polls until `condition()` is truthy; fails with what was last seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def audit_entries(bus: Any) -> list[dict[str, str]]:
    """The bus's audit stream, oldest first."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return [entry for _, entry in client.xrange(bus.runtime.keys.audit)]
    finally:
        client.close()


def holds_for(condition: Callable[[], Any], seconds: float, what: str) -> None:
    """Asserts `condition()` stays truthy for `seconds` (for things that must NOT happen:
    a redelivery, a second copy); polls so it fails as soon as it breaks."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if not value:
            pytest.fail(f"{what} stopped holding; last value: {value!r}")
        time.sleep(POLL_INTERVAL)


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


@pytest.fixture(scope="session")
def services() -> None:
    from bus.services import services_up

    services_up(REDIS_URL, BROKER_URL)


def broker_url_for(vhost: str) -> str:
    return BROKER_URL.rstrip("/") + "/" + vhost


@dataclass
class BusEnv:
    """One isolated bus: its own vhost, key prefix, and the settings env for processes."""

    vhost: str
    prefix: str
    overrides: dict[str, str] = field(default_factory=dict)
    workers: list[Worker] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESSAGE_BUS_")}
        env |= {
            "MESSAGE_BUS_REDIS_URL": REDIS_URL,
            "MESSAGE_BUS_BROKER_URL": broker_url_for(self.vhost),
            "MESSAGE_BUS_KEY_PREFIX": self.prefix,
            "MESSAGE_BUS_SECRET": TEST_SECRET,
            "MESSAGE_BUS_RETRY_BACKOFF": "0.05",
            "MESSAGE_BUS_RETRY_BACKOFF_MAX": "0.5",
            "MESSAGE_BUS_RATE_LIMIT": "0",
            "MESSAGE_BUS_METRICS_PORT": "0",
            "PYTHONPATH": str(ROOT),
        }
        env |= self.overrides
        env |= extra
        return env

    def settings(self, **overrides: Any) -> Any:
        from bus.settings import Settings

        values = {
            k.removeprefix("MESSAGE_BUS_").lower(): v
            for k, v in self.env().items()
            if k.startswith("MESSAGE_BUS_")
        }
        return Settings(**(values | overrides))

    def bus(self, **overrides: Any) -> Any:
        from bus.client import MessageBus

        return MessageBus(self.settings(**overrides))

    def start_worker(
        self,
        *,
        concurrency: int = 4,
        pool: str = "threads",
        queues: str = "bus.critical,bus.high,bus.normal,bus.low",
        hostname: str | None = None,
        **extra: str,
    ) -> Worker:
        worker = Worker.start(
            self,
            concurrency=concurrency,
            pool=pool,
            env=self.env(**extra),
            queues=queues,
            hostname=hostname,
        )
        self.workers.append(worker)
        return worker


class Worker:
    """A real `celery worker` process for one BusEnv."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log

    @classmethod
    def start(
        cls,
        env_: BusEnv,
        *,
        concurrency: int,
        pool: str,
        env: dict[str, str],
        queues: str,
        hostname: str | None = None,
    ) -> Worker:
        """`hostname`: the worker's node is named after that host and, as root, runs in a
        UTS namespace of its own with that hostname, as a worker on another host would (the
        network is still this host's)."""
        ARTIFACTS.mkdir(exist_ok=True)
        name = f"w{uuid.uuid4().hex[:8]}"
        log = ARTIFACTS / f"worker-{env_.vhost}-{name}.log"
        on_host = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname]
        proc = subprocess.Popen(
            [
                *(on_host if hostname and os.geteuid() == 0 else []),
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.app",
                "worker",
                "-Q",
                queues,
                "-P",
                pool,
                "-c",
                str(concurrency),
                "-l",
                "INFO",
                "-n",
                f"{name}@{hostname or '%h'}",
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
            start_new_session=True,
        )
        worker = cls(proc, log)
        wait_for(lambda: worker.ready or proc.poll() is not None, 60, "worker to be ready")
        if proc.poll() is not None:
            pytest.fail(f"worker exited at start:\n{log.read_text()[-3000:]}")
        return worker

    @property
    def ready(self) -> bool:
        return b"ready." in self.log.read_bytes()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def _new_env(request: pytest.FixtureRequest) -> Iterator[BusEnv]:
    from bus.services import delete_vhost, ensure_vhost

    vhost = f"t-{uuid.uuid4().hex[:10]}"
    ensure_vhost(BROKER_URL, vhost)
    env = BusEnv(vhost=vhost, prefix=f"test:{vhost}:")
    try:
        yield env
    finally:
        for worker in env.workers:
            worker.stop()
        delete_vhost(BROKER_URL, vhost)
        _delete_prefix(env.prefix)


def _delete_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])
    client.close()


@pytest.fixture(scope="module")
def module_env(services: None, request: pytest.FixtureRequest) -> Iterator[BusEnv]:
    """A bus shared by a test module (tests use their own agent names)."""
    yield from _new_env(request)


@pytest.fixture
def fresh_env(services: None, request: pytest.FixtureRequest) -> Iterator[BusEnv]:
    """A bus of its own for one test (for tests that break or stop things)."""
    yield from _new_env(request)


@pytest.fixture(scope="module")
def worker(module_env: BusEnv) -> Worker:
    return module_env.start_worker()


@pytest.fixture
def bus(module_env: BusEnv, worker: Worker) -> Iterator[Any]:
    client = module_env.bus()
    yield client
    client.close()


@pytest.fixture
def agents() -> Callable[[str], str]:
    """Unique agent ids per test, readable in failures: agents('alice') -> 'alice-1a2b3c'."""
    suffix = uuid.uuid4().hex[:6]
    return lambda name: f"{name}-{suffix}"
