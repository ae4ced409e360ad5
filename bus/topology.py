"""Broker topology and the Celery settings built from bus settings.

Queues ``bus.critical|high|normal|low`` (durable, dead-lettering into ``bus.dlx``), the
fanout exchange ``bus.dlx`` and its queue ``bus.dead_letter``. The dead-letter queue is
deliberately *not* among Celery's task queues, so no worker can ever consume it as tasks.
"""

from __future__ import annotations

import logging
from typing import Any

from amqp.exceptions import PreconditionFailed
from kombu.entity import Exchange, Queue

from bus.schema import Priority
from bus.settings import Settings

logger = logging.getLogger(__name__)

EXCHANGE = "bus"
DLX = "bus.dlx"
DEAD_LETTER_QUEUE = "bus.dead_letter"
DELIVER_TASK = "bus.deliver"
DELIVER_BATCH_TASK = "bus.deliver_batch"
HANDLE_TASK = "bus.handle"
PRIORITY_QUEUES = [
    p.queue for p in (Priority.critical, Priority.high, Priority.normal, Priority.low)
]
# Quorum queues drop a message redelivered this many times (a worker that keeps dying on
# it); with at-least-once dead-lettering it lands in bus.dead_letter instead of vanishing.
QUORUM_DELIVERY_LIMIT = 20

bus_exchange = Exchange(EXCHANGE, type="direct", durable=True)
dead_letter_exchange = Exchange(DLX, type="fanout", durable=True)


def queue_arguments(settings: Settings) -> dict[str, Any]:
    args: dict[str, Any] = {"x-dead-letter-exchange": DLX}
    if settings.queue_type == "quorum":
        args |= {
            "x-queue-type": "quorum",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-delivery-limit": QUORUM_DELIVERY_LIMIT,
        }
    if settings.queue_max_length is not None:
        args |= {"x-max-length": settings.queue_max_length, "x-overflow": "reject-publish"}
    return args


EXPRESS_QUEUES = ["bus.critical", "bus.high"]
# RabbitMQ consumer priority of the express worker: it gets critical and high messages first
# while it has room, the main worker only when it is saturated.
EXPRESS_CONSUMER_PRIORITY = 10


def priority_queues(settings: Settings, express: bool = False) -> list[Queue]:
    args = queue_arguments(settings)
    return [
        Queue(
            name,
            bus_exchange,
            routing_key=name,
            durable=True,
            queue_arguments=args,
            consumer_arguments={"x-priority": EXPRESS_CONSUMER_PRIORITY}
            if express and name in EXPRESS_QUEUES
            else None,
        )
        for name in PRIORITY_QUEUES
    ]


def agent_queue(settings: Settings, agent: str) -> Queue:
    """A worker agent's own queue ``agent.<name>``, dead-lettering like the others."""
    name = f"agent.{agent}"
    return Queue(
        name,
        bus_exchange,
        routing_key=name,
        durable=True,
        queue_arguments=queue_arguments(settings),
    )


def dead_letter_queue(settings: Settings) -> Queue:
    """Bounded in count and bytes: nothing drains it on its own, and any sender can fill it
    (its own messages with a tiny ttl expire into it). Past a bound the oldest letters go
    (their status in Redis still says dead or expired, with the reason)."""
    args: dict[str, Any] = {
        "x-max-length": settings.dead_letter_max_length,
        "x-max-length-bytes": settings.dead_letter_max_bytes,
        "x-overflow": "drop-head",
    }
    if settings.queue_type == "quorum":
        args["x-queue-type"] = "quorum"
    return Queue(
        DEAD_LETTER_QUEUE,
        dead_letter_exchange,
        routing_key="",
        durable=True,
        queue_arguments=args,
    )


def declare(channel: Any, settings: Settings) -> None:
    """Declares every exchange and queue (idempotent; same arguments every time)."""
    for queue in priority_queues(settings):
        queue(channel).declare()
    _declare_dead_letter_queue(channel, settings)


def _declare_dead_letter_queue(channel: Any, settings: Settings) -> None:
    """On a channel of its own: a queue declared before with other arguments (by a bus
    from before its bounds) is refused with a channel error, and is kept as it is."""
    own = channel.connection.channel()
    try:
        dead_letter_queue(settings)(own).declare()
    except PreconditionFailed as exc:
        logger.warning(
            "%s exists with other arguments (%s); it is used as it is, unbounded. Bound it "
            "with a policy: rabbitmqctl set_policy --apply-to queues dead-letters "
            '\'^bus\\.dead_letter$\' \'{"max-length": %d, "max-length-bytes": %d, '
            '"overflow": "drop-head"}\', or delete it while empty',
            DEAD_LETTER_QUEUE,
            exc,
            settings.dead_letter_max_length,
            settings.dead_letter_max_bytes,
        )
        own = channel.connection.channel()
        queue = dead_letter_queue(settings)(own)
        queue.exchange.declare()
        queue.bind_to(exchange=DLX, routing_key="")
    finally:
        if own.is_open:
            own.close()


def celery_config(settings: Settings, express: bool = False) -> dict[str, Any]:
    """Celery settings (lower-case names); celeryconfig.py exports these. `express` is for
    the small worker that serves bus.critical and bus.high with consumer priority."""
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        # Socket read and write timeouts: a node that stops answering with its socket open
        # (paused, cut off) fails the call instead of hanging it, and kombu moves on to
        # the next URL of a `;`-separated list.
        "broker_transport_options": {
            "confirm_publish": True,
            "read_timeout": settings.broker_timeout,
            "write_timeout": settings.broker_timeout,
        },
        "broker_heartbeat": 30,
        "broker_pool_limit": 16,
        # A burst of sends waits a bounded time for one of the pool's connections (then a
        # clear BusUnavailable), never for ever.
        "broker_pool_acquire_timeout": 10,
        "task_queues": priority_queues(settings, express),
        "task_default_queue": Priority.normal.queue,
        "task_default_exchange": EXCHANGE,
        "task_default_routing_key": Priority.normal.queue,
        "task_create_missing_queues": False,
        "task_default_delivery_mode": "persistent",
        "task_acks_late": True,
        "task_acks_on_failure_or_timeout": False,
        "task_reject_on_worker_lost": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_backend": None,
        "task_ignore_result": True,
        "task_store_errors_even_if_ignored": False,
        # A "sent" event would be a second confirmed publish per send: off unless asked.
        "task_send_sent_event": settings.task_events,
        # Off by default (each event is a confirmed publish); Flower turns them on when it
        # connects, and `msgbus worker -E` forces them.
        "worker_send_task_events": settings.task_events,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        # Pool and concurrency come from the command line (`msgbus worker` fills them from
        # settings): a worker_pool set here would silently override `celery worker -P`.
        "timezone": "UTC",
        "enable_utc": True,
    }
