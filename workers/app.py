"""The Celery application the `celery worker` processes run (`celery -A workers.app`)."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, bootsteps
from celery.signals import worker_process_init

from bus import topology
from bus.runtime import Runtime, runtime_from_env

logger = logging.getLogger(__name__)

runtime: Runtime = runtime_from_env()

app = Celery("msgbus")
app.conf.update(topology.celery_config(runtime.settings))
app.conf.bus_settings = runtime.settings


class DeclareTopology(bootsteps.StartStopStep):
    """Declares the dead-letter exchange and queue at worker start (Celery declares only
    the queues it consumes, and bus.dead_letter must exist before anything is rejected)."""

    requires = {"celery.worker.consumer.connection:Connection"}

    def start(self, parent: Any) -> None:
        topology.declare(parent.connection.default_channel, runtime.settings)


app.steps["consumer"].add(DeclareTopology)


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    # A prefork child must not share the parent's sockets.
    runtime.reset()


import workers.tasks  # noqa: E402,F401  (registers the tasks on `app`)
