"""The baseline: a raw Celery app with the bus's broker settings (publisher confirms, acks
late, prefetch 1, json, the same pool) and no-op tasks on plain queues."""

from __future__ import annotations

import os
import time

import redis
from celery import Celery
from kombu import Queue

RAW_QUEUES = ["raw.critical", "raw.low", "raw.q"]

app = Celery("raw")
app.conf.update(
    broker_url=os.environ.get("MESSAGE_BUS_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    broker_transport_options={"confirm_publish": True},
    # The same layout as the bus: an express worker (RAW_EXPRESS=1) takes raw.critical first.
    task_queues=[
        Queue(
            q,
            routing_key=q,
            durable=True,
            consumer_arguments={"x-priority": 10}
            if os.environ.get("RAW_EXPRESS") == "1" and q == "raw.critical"
            else None,
        )
        for q in RAW_QUEUES
    ],
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
_redis = None


def _r() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(
            os.environ.get("MESSAGE_BUS_REDIS_URL", "redis://127.0.0.1:6379/0")
        )
    return _redis


@app.task(name="raw.noop")
def noop(*_: object) -> None:
    """Does nothing: the floor a bus delivery is compared with."""


@app.task(name="raw.stamp")
def stamp(key: str, sent: float) -> None:
    """Records send->start latency (for latency and priority workloads)."""
    _r().rpush(key, time.time() - sent)
