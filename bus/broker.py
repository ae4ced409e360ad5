"""Publishing delivery tasks to RabbitMQ through Celery (publisher confirms, persistent).

A send returns only once the broker has confirmed the message; when it cannot, the caller
gets BusUnavailable (or LimitExceeded when a bounded queue refuses it), never silence.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from amqp.exceptions import ChannelError, MessageNacked  # a confirm that came back as a nack
from amqp.exceptions import ConnectionError as AMQPConnectionError
from celery import Celery
from kombu.connection import Connection
from kombu.entity import Queue
from kombu.exceptions import KombuError, OperationalError
from kombu.exceptions import LimitExceeded as PoolExhausted

from bus import topology
from bus.breaker import BREAKERS
from bus.errors import BusError, BusUnavailable, LimitExceeded
from bus.settings import Settings

logger = logging.getLogger(__name__)

_BROKER_ERRORS = (
    OperationalError,
    KombuError,
    AMQPConnectionError,  # the broker closed the connection (not a builtin ConnectionError)
    ConnectionError,
    OSError,
    TimeoutError,
)
_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0.1,
    "interval_step": 0.5,
    "interval_max": 1,
    # a nack is an answer (queue full), not a connection problem: no retry
    "errback": None,
}


def publisher_app(settings: Settings) -> Celery:
    """A Celery app used only to publish (the worker's app lives in workers/)."""
    app = Celery("msgbus-client", set_as_current=False)
    app.conf.update(topology.celery_config(settings))
    app.conf.broker_connection_timeout = 3
    return app


@contextmanager
def broker_errors(action: str, *, bounded: bool = True) -> Iterator[None]:
    """Broker failures as bus errors. A nack is a refusal: "queue full" when the queue has a
    length bound (`bounded`); without one it can only be the broker failing to take the
    message (a quorum queue losing its leader), which is transient."""
    breaker = BREAKERS["broker"]
    with breaker.passage(action):
        try:
            yield
        except _BROKER_ERRORS + (MessageNacked,) as exc:
            if _nacked(exc) and not bounded:
                breaker.success()
                raise BusUnavailable(
                    f"bus unavailable: the broker refused the message while trying to {action} "
                    "(a nack: a quorum queue changing leader, or a length limit a broker policy "
                    "sets); nothing was sent, retry",
                    component="broker",
                ) from exc
            if _nacked(exc):  # a refusal is an answer, not an outage (Celery may wrap it)
                breaker.success()
                raise LimitExceeded(
                    f"the broker refused the message while trying to {action}: the queue is full "
                    "(x-max-length with reject-publish); nothing was sent, retry later",
                    limit="queue_max_length",
                ) from exc
            if isinstance(exc, PoolExhausted):  # our own pool, not the broker: no breaker trip
                raise BusUnavailable(
                    f"bus busy: every broker connection of this process stayed in use for "
                    f"10s while trying to {action}; retry shortly",
                    component="broker",
                ) from exc
            breaker.failure()
            raise BusUnavailable(
                f"bus unavailable: the broker cannot be reached while trying to {action} ({exc})",
                component="broker",
            ) from exc
        except ChannelError as exc:
            # The broker closed the channel on this operation: an answer about this message
            # (too large, a queue or exchange gone), not an outage of the node.
            breaker.success()
            raise _refused(action, exc) from exc
        except BusError:
            raise  # a nested call already judged it
        except Exception:
            breaker.success()
            raise
        else:
            breaker.success()


def _refused(action: str, exc: ChannelError) -> BusError:
    text = str(exc)
    if "message size" in text or "max size" in text:
        return LimitExceeded(
            f"the broker refused the message while trying to {action}: it is larger than "
            f"RabbitMQ's max_message_size ({text}); nothing was sent",
            limit="broker_max_message_size",
        )
    return BusUnavailable(
        f"the broker refused to {action} ({text}); nothing was sent, retry",
        component="broker",
    )


def _nacked(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, MessageNacked):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class Broker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._app: Celery | None = None
        self._declared = False
        self._declared_queues: set[str] = set()
        self._lock = threading.Lock()

    @property
    def app(self) -> Celery:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    self._app = publisher_app(self.settings)
        return self._app

    def connection(self) -> Connection:
        connection: Connection = self.app.connection_for_write()
        return connection

    def ensure_topology(self) -> None:
        if self._declared:
            return
        with broker_errors("declare the bus queues"), self.connection() as conn:
            conn.ensure_connection(max_retries=1)
            topology.declare(conn.default_channel, self.settings)
        self._declared = True

    def declare_queue(self, queue: Queue) -> None:
        """Declares a queue outside the fixed topology once per process (agent queues)."""
        if queue.name in self._declared_queues:
            return
        with broker_errors(f"declare queue {queue.name}"), self.connection() as conn:
            queue(conn.default_channel).declare()
        self._declared_queues.add(queue.name)

    def publish(
        self,
        task: str,
        args: Sequence[Any],
        *,
        queue: str | Queue,
        task_id: str,
        expiration: float | None = None,
        headers: dict[str, Any] | None = None,
        summary: str = "",
    ) -> None:
        """Publishes one task message and waits for the broker's confirm."""
        self.ensure_topology()
        if isinstance(queue, Queue):
            self.declare_queue(queue)
        options: dict[str, Any] = {}
        if expiration is not None:
            # AMQP per-message expiry: an expired message is dead-lettered, never consumed.
            options["expiration"] = max(expiration, 0.001)
        bounded = self.settings.queue_max_length is not None
        with broker_errors("publish a message", bounded=bounded):
            self.app.send_task(
                task,
                # A node that stops answering keeps its socket open: without a bound the
                # send would wait for its confirm forever. On timeout kombu takes the next
                # URL of a list and publishes again (delivery is idempotent per id).
                confirm_timeout=self.settings.broker_timeout,
                args=list(args),
                queue=queue,
                task_id=task_id,
                headers=headers or {},
                argsrepr=summary,  # payloads stay out of Flower and logs
                kwargsrepr="{}",
                retry=True,
                retry_policy=_RETRY_POLICY,
                **options,
            )

    def ping(self) -> bool:
        with broker_errors("reach the broker"), self.connection() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
            return True
