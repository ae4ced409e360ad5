"""The baseline: a raw Celery app with the bus's broker settings (publisher confirms, acks
late, prefetch 1, json, the same pool and queue type) and no-op tasks on plain queues.

`raw.echo` returns its argument: what a Celery user writes instead of a worker agent
answering a request (`send_task(...).get()`). Its worker stores results in the backend
`RAW_RESULT_BACKEND` names (a Redis URL, keys under `RAW_RESULT_PREFIX`, or rpc://);
`echo_client` is the caller's side of the same backend."""

from __future__ import annotations

import os
import time

import redis
from celery import Celery
from kombu import Queue

from bus.redis_conn import connect
from workers.wakeup import WakeOnSignal

RAW_QUEUES = ["raw.critical", "raw.low", "raw.q", "raw.echo"]


def raw_queues(queue_type: str) -> list[Queue]:
    """The raw queues, of the bus's queue type (classic or quorum) for a like-for-like run."""
    return [
        Queue(
            q,
            routing_key=q,
            durable=True,
            queue_arguments={"x-queue-type": queue_type},
            # The same layout as the bus: an express worker (RAW_EXPRESS=1) takes
            # raw.critical first.
            consumer_arguments={"x-priority": 10}
            if os.environ.get("RAW_EXPRESS") == "1" and q == "raw.critical"
            else None,
        )
        for q in RAW_QUEUES
    ]


def use(broker_url: str, queue_type: str) -> None:
    """Points this process's publishes at the bench's vhost and queue type (before the
    first publish: Celery builds its queue map once)."""
    app.conf.broker_url = broker_url
    app.conf.task_queues = raw_queues(queue_type)


def _result_settings(backend: str, prefix: str) -> dict[str, object]:
    settings: dict[str, object] = {"result_backend": backend, "result_expires": 600}
    if backend.startswith("redis"):
        # The bench's key prefix: its result keys are deleted with the rest of its keys.
        settings["result_backend_transport_options"] = {"global_keyprefix": prefix}
    else:
        settings["result_persistent"] = False
    return settings


def echo_client(broker_url: str, queue_type: str, backend: str, prefix: str) -> Celery:
    """A caller's app for `raw.echo` with results through `backend`."""
    client = Celery("raw-echo-client", set_as_current=False)
    client.conf.update(
        broker_url=broker_url,
        broker_transport_options={"confirm_publish": True},
        task_queues=raw_queues(queue_type),
        task_default_delivery_mode="persistent",
        task_serializer="json",
        accept_content=["json"],
        # kombu's pool limit is one per process: the bus's own (16) in the bench process,
        # which another value would try to shrink while the bus's connections are out.
        broker_pool_limit=16,
        **_result_settings(backend, prefix),
    )
    return client


app = Celery("raw")
app.conf.update(
    broker_url=os.environ.get("MESSAGE_BUS_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    broker_transport_options={"confirm_publish": True},
    task_queues=raw_queues(os.environ.get("MESSAGE_BUS_QUEUE_TYPE", "classic")),
    task_default_queue="raw.q",
    task_default_delivery_mode="persistent",
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    worker_hijack_root_logger=False,
)
# The harness's stop signals take effect at once, as on the bus's worker; nothing a task
# or a message goes through changes (workers/wakeup.py).
app.steps["consumer"].add(WakeOnSignal)
_backend = os.environ.get("RAW_RESULT_BACKEND")
if _backend:
    app.conf.update(_result_settings(_backend, os.environ.get("RAW_RESULT_PREFIX", "")))
_redis = None


def _r() -> redis.Redis:
    global _redis
    if _redis is None:
        # The bus's URL forms (Sentinel's too), so the baseline runs on the same Redis.
        _redis = connect(os.environ.get("MESSAGE_BUS_REDIS_URL", "redis://127.0.0.1:6379/0"))
    return _redis


@app.task(name="raw.noop")
def noop(*_: object) -> None:
    """Does nothing: the floor a bus delivery is compared with."""


@app.task(name="raw.stamp")
def stamp(key: str, sent: float) -> None:
    """Records send->start latency (for latency and priority workloads)."""
    _r().rpush(key, time.time() - sent)


@app.task(name="raw.echo", ignore_result=False)
def echo(value: object) -> object:
    """Returns its argument through the result backend: the raw request/response."""
    return value
