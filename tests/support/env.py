"""One isolated bus per test or module: its own vhost, key prefix and settings env, and
real `celery worker` processes that drain and stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from bus.client import MessageBus
from bus.settings import Settings
from tests.support.paths import ARTIFACTS, BROKER_URL, REDIS_URL, ROOT, TEST_SECRET
from tests.support.waiting import wait_for


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
        values = {
            k.removeprefix("MESSAGE_BUS_").lower(): v
            for k, v in self.env().items()
            if k.startswith("MESSAGE_BUS_")
        }
        return Settings(**(values | overrides))

    def bus(self, **overrides: Any) -> Any:
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


def delete_prefix(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for i in range(0, len(keys), 500):
        client.unlink(*keys[i : i + 500])  # freed in the background: a big inbox would block Redis
    client.close()


def audit_entries(bus: Any) -> list[dict[str, str]]:
    """The bus's audit stream, oldest first."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return [entry for _, entry in client.xrange(bus.runtime.keys.audit)]
    finally:
        client.close()


def queue_depth(bus: Any, queue: str) -> int:
    """Messages waiting in `queue` of the bus's vhost, as the broker counts them."""
    with bus.runtime.broker.connection() as conn:
        channel = conn.channel()
        try:
            return int(channel.queue_declare(queue, passive=True).message_count)
        finally:
            channel.close()
