"""The Celery application the `celery worker` processes run (`celery -A workers.app`).

`create_app` builds an app for one bus (its Runtime): the tasks find their bus through
their app (`runtime_of`), so one process can hold apps for several buses, as a test's
in-process worker does (`embedded`: it leaves the process's heap, GIL switch interval and
metrics port alone). `app` and `runtime` are this process's, from the environment.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from celery import Celery, bootsteps
from celery.signals import (
    beat_init,
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)

from bus import heap, topology
from bus.errors import ConfigError
from bus.redis_conn import SENTINEL_SCHEME, SentinelTarget
from bus.runtime import Runtime, runtime_from_env
from bus.settings import SOLO_POOL_REFUSED
from workers import fastjson, jobs, tasks, wakeup
from workers.agent_runtime import current_agent
from workers.metrics_exporter import start_exporter

logger = logging.getLogger(__name__)


def runtime_of(app: Any) -> Runtime:
    """The bus an app (or the sender of a worker signal, which has one) was built for."""
    owner = app if isinstance(app, Celery) else app.app
    runtime: Runtime = owner.conf.bus_runtime
    return runtime


def _embedded(sender: Any) -> bool:
    return bool(sender.app.conf.bus_embedded)


class DeclareTopology(bootsteps.StartStopStep):
    """Declares the dead-letter exchange and queue at worker start (Celery declares only
    the queues it consumes, and bus.dead_letter must exist before anything is rejected)."""

    requires = {"celery.worker.consumer.connection:Connection"}

    def start(self, parent: Any) -> None:
        topology.declare(parent.connection.default_channel, runtime_of(parent).settings)


def redbeat_connection(redis_url: str) -> dict[str, Any]:
    """RedBeat's settings for the bus's Redis URL. RedBeat has a Sentinel form of its own
    (``redis-sentinel://`` plus the Sentinels in its options) rather than the bus's URL."""
    # Ride out a failover (or a restart) for this long instead of crashing beat.
    options: dict[str, Any] = {"retry_period": 60}
    if not redis_url.startswith(SENTINEL_SCHEME):
        return {"redbeat_redis_url": redis_url, "redbeat_redis_options": options}
    target = SentinelTarget.parse(redis_url)
    options |= {
        "sentinels": target.hosts,
        "service_name": target.service,
        "db": target.db,
        "socket_timeout": 5.0,
    }
    if target.password:
        options["password"] = target.password
    return {"redbeat_redis_url": "redis-sentinel://", "redbeat_redis_options": options}


def create_app(runtime: Runtime, *, embedded: bool = False) -> Celery:
    """A Celery app delivering for this runtime's bus, its tasks and beat schedule on it."""
    s = runtime.settings
    app = Celery("msgbus", set_as_current=not embedded)
    # `msgbus worker --express` (MESSAGE_BUS_EXPRESS_WORKER=1) consumes critical and high
    # with consumer priority, so they never wait behind the main worker's backlog.
    app.conf.update(topology.celery_config(s, express=s.express_worker))
    app.conf.bus_settings = s
    app.conf.bus_runtime = runtime
    app.conf.bus_embedded = embedded
    # Messages it cannot take are dead-lettered, not acked away (see workers.consumer).
    app.conf.worker_consumer = "workers.consumer:BusConsumer"
    app.steps["consumer"].add(DeclareTopology)
    app.steps["consumer"].add(wakeup.WakeOnSignal)  # a stop signal is acted on at once
    tasks.register(app)
    jobs.register(app)
    app.conf.beat_schedule = jobs.beat_schedule(s)
    app.conf.update(redbeat_connection(s.redis_url))
    app.conf.redbeat_key_prefix = s.key_prefix + "redbeat:"
    app.conf.redbeat_lock_timeout = max(60, int(s.stats_interval * 5))
    return app


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    # A prefork child must not share the parent's sockets, nor its signal wakeup pipe.
    runtime.reset()
    wakeup.forget_after_fork()


@worker_init.connect
@beat_init.connect
def _refuse_a_bad_secret(sender: Any = None, **_: Any) -> None:
    # Production without a secret, or with one too short, stops every process at start
    # (worker, express worker, worker agents, beat), not only the ones that sign.
    try:
        runtime_of(sender).settings.signing_keys  # noqa: B018
    except ConfigError as exc:
        raise SystemExit(f"msgbus: {exc.message}") from None


@worker_init.connect
def _refuse_solo_pool(sender: Any = None, **_: Any) -> None:
    # `celery worker -P solo` bypasses the settings' check (see SOLO_POOL_REFUSED).
    pool = getattr(sender, "pool_cls", None)
    if pool is not None and getattr(pool, "__module__", "") == "celery.concurrency.solo":
        raise SystemExit(f"msgbus worker: {SOLO_POOL_REFUSED}")


@worker_init.connect
def _short_gil_switch(sender: Any = None, **_: Any) -> None:
    # The express worker (threads pool) hands the GIL to a thread that has a critical
    # message sooner. Not in the main worker: forced switches cost it ~10% throughput.
    if runtime_of(sender).settings.express_worker and not _embedded(sender):
        sys.setswitchinterval(0.0005)


@worker_init.connect
def _freeze_startup_heap(sender: Any = None, **_: Any) -> None:
    # Before the consumer starts (and before prefork forks its children).
    if not _embedded(sender):
        frozen = heap.freeze_startup_heap()
        logger.debug("froze %d start-up objects out of full collections", frozen)


@worker_init.connect
def _start_metrics_exporter(sender: Any = None, **_: Any) -> None:
    s = runtime_of(sender).settings
    port = s.metrics_port
    if port and s.express_worker:
        port += 1  # beside the main worker on the same host
    if port and not _embedded(sender):
        try:
            start_exporter(s.metrics_host, port, s)
            logger.info("worker metrics on http://%s:%d/metrics", s.metrics_host, port)
        except OSError as exc:  # another worker on this host already exports there
            logger.warning("worker metrics exporter not started on port %d: %s", port, exc)


# The announcers of the workers in this process, stopped when their worker stops.
_announcers: dict[int, tuple[threading.Event, threading.Thread]] = {}


@worker_init.connect
def _announce_keys(sender: Any = None, **_: Any) -> None:
    # Which keys this worker verifies, for `msgbus health` and the senders' check.
    s = runtime_of(sender).settings
    kind = "agent" if current_agent() is not None else "express" if s.express_worker else "worker"
    stop = threading.Event()
    _announcers[id(sender)] = stop, runtime_of(sender).keyring.announce_forever(kind, stop)


@worker_shutdown.connect
def _stop_announcing(sender: Any = None, **_: Any) -> None:
    stop, thread = _announcers.pop(id(sender), (None, None))
    if stop is not None and thread is not None:
        stop.set()
        thread.join(10)


@beat_init.connect
def _announce_beat_keys(sender: Any = None, **_: Any) -> None:
    runtime_of(sender).keyring.announce_forever("beat")


@worker_ready.connect
@beat_init.connect
def _say_ready(sender: Any = None, **_: Any) -> None:
    # `msgbus up` says the bus is up only once every child has said so.
    ready_file = runtime_of(sender).settings.ready_file
    if ready_file is not None:
        ready_file.touch()


runtime: Runtime = runtime_from_env()
fastjson.install()
app = create_app(runtime)
