"""agent-message-bus: typed, signed messages between agents over Celery/RabbitMQ and Redis."""

from bus.client import MessageBus, RequestTimeout
from bus.errors import (
    AuthError,
    BusError,
    BusUnavailable,
    LimitExceeded,
    NotFound,
    RateLimited,
    SecurityError,
    ValidationError,
)
from bus.schema import Message, MessageType, Priority, Receipt, ReceivedMessage, Status
from bus.settings import Settings

__all__ = [
    "AuthError",
    "BusError",
    "BusUnavailable",
    "LimitExceeded",
    "Message",
    "MessageBus",
    "MessageType",
    "NotFound",
    "Priority",
    "RateLimited",
    "Receipt",
    "ReceivedMessage",
    "RequestTimeout",
    "SecurityError",
    "Settings",
    "Status",
    "ValidationError",
]
