"""The worker's consumer: a task message it cannot take goes to the dead letters.

Celery acks a message whose body it cannot decode (a content type it does not accept,
broken JSON), so the message would vanish behind a "queued" receipt; and its reports of
unknown or invalid tasks print the body, payload included. Here every such message is
rejected without requeue, which RabbitMQ dead-letters to bus.dlx (listed as `malformed`
by the dead-letter tools), and the log line names the task and the problem, never the body.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals
from celery.worker.consumer import Consumer

logger = logging.getLogger(__name__)


def _describe(message: Any) -> str:
    headers = message.headers or {}
    return (
        f"task {headers.get('task')!r} id {headers.get('id')!r} "
        f"(content type {message.content_type!r})"
    )


class BusConsumer(Consumer):
    def on_decode_error(self, message: Any, exc: Exception) -> None:
        logger.error("undecodable message %s: %s; dead-lettered", _describe(message), exc)
        message.reject_log_error(logger, self.connection_errors)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        logger.error("unknown task in message %s; dead-lettered", _describe(message))
        message.reject_log_error(logger, self.connection_errors)
        signals.task_rejected.send(sender=self, message=message, exc=exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        logger.error("invalid task message %s: %s; dead-lettered", _describe(message), exc)
        message.reject_log_error(logger, self.connection_errors)
        signals.task_rejected.send(sender=self, message=message, exc=exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        logger.error("message with no task %s; dead-lettered", _describe(message))
        message.reject_log_error(logger, self.connection_errors)
        signals.task_rejected.send(sender=self, message=message, exc=None)
