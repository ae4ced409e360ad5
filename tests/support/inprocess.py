"""The bus's Celery app run inside the test process (celery.contrib.testing's worker)
against the real RabbitMQ and Redis, for tests that need only "a worker consuming".

Same tasks, consumer and topology as `msgbus worker` (workers.app.create_app), without
starting a process. Tests that kill or restart a worker, or run one with other settings,
start real `celery worker` processes instead (BusEnv.start_worker). One at a time per
process: Celery stops a worker through process-wide flags (celery.worker.state).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery.contrib.testing.worker import TestWorkController, setup_app_for_worker
from celery.worker import state

from bus.runtime import Runtime
from workers.app import create_app

QUEUES = "bus.critical,bus.high,bus.normal,bus.low"


@contextmanager
def inprocess_worker(env: Any, *, concurrency: int = 4) -> Iterator[TestWorkController]:
    """A threads-pool worker for the env's bus (its vhost, prefix and settings) until the
    block ends; it has declared its queues and consumes when this yields. It stops warm
    (running tasks finish), as `celery worker` does on SIGTERM."""
    runtime = Runtime(env.settings())
    app = create_app(runtime, embedded=True)
    app.conf.worker_hijack_root_logger = False  # pytest's log capture stays in place
    # The consumer looks at the stop flag when its event loop wakes, at the latest for the
    # broker heartbeat check (heartbeat / 2): it stops within a second.
    app.conf.broker_heartbeat = 2
    setup_app_for_worker(app, "WARNING", None)
    worker = TestWorkController(
        app=app,
        hostname=f"embedded-{uuid.uuid4().hex[:8]}@{env.vhost}",
        pool="threads",
        concurrency=concurrency,
        queues=QUEUES,
        loglevel="WARNING",
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
    )
    thread = threading.Thread(target=worker.start, name="embedded-worker", daemon=True)
    thread.start()
    worker.ensure_started()
    try:
        yield worker
    finally:
        state.should_stop = 0
        thread.join(30)
        state.should_stop = None
        runtime.close()
        app.close()
    if thread.is_alive():
        raise RuntimeError(f"the in-process worker did not stop within 30 s: {worker.hostname}")
