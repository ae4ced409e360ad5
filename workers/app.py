"""The Celery application the `celery worker` processes run (`celery -A workers.app`)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import Celery, bootsteps
from celery.signals import beat_init, worker_init, worker_process_init, worker_ready
from prometheus_client import start_http_server

from bus import heap, topology
from bus.errors import ConfigError
from bus.redis_conn import SENTINEL_SCHEME, SentinelTarget
from bus.runtime import Runtime, runtime_from_env
from bus.settings import SOLO_POOL_REFUSED
from workers import fastjson
from workers.agent_runtime import current_agent

logger = logging.getLogger(__name__)

runtime: Runtime = runtime_from_env()
fastjson.install()

app = Celery("msgbus")
# `msgbus worker --express` (MESSAGE_BUS_EXPRESS_WORKER=1) consumes critical and high with
# consumer priority, so they never wait behind the main worker's backlog.
EXPRESS = runtime.settings.express_worker
app.conf.update(topology.celery_config(runtime.settings, express=EXPRESS))
app.conf.bus_settings = runtime.settings
# Messages it cannot take are dead-lettered, not acked away (see workers.consumer).
app.conf.worker_consumer = "workers.consumer:BusConsumer"


class DeclareTopology(bootsteps.StartStopStep):
    """Declares the dead-letter exchange and queue at worker start (Celery declares only
    the queues it consumes, and bus.dead_letter must exist before anything is rejected)."""

    requires = {"celery.worker.consumer.connection:Connection"}

    def start(self, parent: Any) -> None:
        topology.declare(parent.connection.default_channel, runtime.settings)


app.steps["consumer"].add(DeclareTopology)


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


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    # A prefork child must not share the parent's sockets.
    runtime.reset()


@worker_init.connect
@beat_init.connect
def _refuse_a_bad_secret(**_: Any) -> None:
    # Production without a secret, or with one too short, stops every process at start
    # (worker, express worker, worker agents, beat), not only the ones that sign.
    try:
        runtime.settings.signing_keys  # noqa: B018
    except ConfigError as exc:
        raise SystemExit(f"msgbus: {exc.message}") from None


@worker_init.connect
def _refuse_solo_pool(sender: Any = None, **_: Any) -> None:
    # `celery worker -P solo` bypasses the settings' check (see SOLO_POOL_REFUSED).
    pool = getattr(sender, "pool_cls", None)
    if pool is not None and getattr(pool, "__module__", "") == "celery.concurrency.solo":
        raise SystemExit(f"msgbus worker: {SOLO_POOL_REFUSED}")


@worker_init.connect
def _short_gil_switch(**_: Any) -> None:
    # The express worker (threads pool) hands the GIL to a thread that has a critical
    # message sooner. Not in the main worker: forced switches cost it ~10% throughput.
    if EXPRESS:
        sys.setswitchinterval(0.0005)


@worker_init.connect
def _freeze_startup_heap(**_: Any) -> None:
    # Before the consumer starts (and before prefork forks its children).
    frozen = heap.freeze_startup_heap()
    logger.debug("froze %d start-up objects out of full collections", frozen)


@worker_init.connect
def _start_metrics_exporter(**_: Any) -> None:
    port = runtime.settings.metrics_port
    if port and EXPRESS:
        port += 1  # beside the main worker on the same host
    if port:
        try:
            start_http_server(port, addr=runtime.settings.metrics_host)
            logger.info(
                "worker metrics on http://%s:%d/metrics", runtime.settings.metrics_host, port
            )
        except OSError as exc:  # another worker on this host already exports there
            logger.warning("worker metrics exporter not started on port %d: %s", port, exc)


@worker_init.connect
def _announce_keys(**_: Any) -> None:
    # Which keys this worker verifies, for `msgbus health` and the senders' check.
    kind = "agent" if current_agent() is not None else "express" if EXPRESS else "worker"
    runtime.keyring.announce_forever(kind)


@beat_init.connect
def _announce_beat_keys(**_: Any) -> None:
    runtime.keyring.announce_forever("beat")


@worker_ready.connect
@beat_init.connect
def _say_ready(**_: Any) -> None:
    # `msgbus up` says the bus is up only once every child has said so.
    if runtime.settings.ready_file is not None:
        runtime.settings.ready_file.touch()


import workers.jobs  # noqa: E402  (registers the scheduled jobs)
import workers.tasks  # noqa: E402,F401  (registers the tasks on `app`)

app.conf.beat_schedule = workers.jobs.beat_schedule()
app.conf.update(redbeat_connection(runtime.settings.redis_url))
app.conf.redbeat_key_prefix = runtime.settings.key_prefix + "redbeat:"
app.conf.redbeat_lock_timeout = max(60, int(runtime.settings.stats_interval * 5))
