"""One exception tree for the whole bus.

Every error carries a message a user can act on (what was wrong, which limit, what to do)
and structured fields. Edges translate them: the MCP server into tool errors, the CLI into
a stderr line and exit code, Celery tasks into a retry (transient) or a reject to the
dead-letter exchange (permanent).
"""

from __future__ import annotations

from typing import Any


class BusError(Exception):
    """Root of every error the bus raises on purpose."""

    code = "bus_error"
    #: CLI exit code for this family of errors.
    exit_code = 1

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.fields}


class ValidationError(BusError):
    """The input is malformed or breaks a rule of the contract."""

    code = "invalid"
    exit_code = 2


class LimitExceeded(ValidationError):
    """The input is well formed but over a configured limit."""

    code = "limit_exceeded"


class AuthError(BusError):
    """Identity or permission problem (bad token, ACL denial, admin-only action)."""

    code = "forbidden"
    exit_code = 3


class RateLimited(BusError):
    """The agent is over its rate limit; retry after `retry_after` seconds."""

    code = "rate_limited"
    exit_code = 4

    def __init__(self, message: str, *, retry_after: float, **fields: Any) -> None:
        super().__init__(message, retry_after=round(retry_after, 3), **fields)
        self.retry_after = retry_after


class NotFound(BusError):
    """A message, dead letter or agent that does not exist (or is no longer kept)."""

    code = "not_found"
    exit_code = 5


class BusUnavailable(BusError):
    """Redis or the broker cannot be reached; transient, retry later."""

    code = "unavailable"
    exit_code = 6


class SecurityError(BusError):
    """A message failed an integrity or safety check (signature, replay, bomb, tamper)."""

    code = "security"
    exit_code = 7

    def __init__(self, message: str, *, reason: str, **fields: Any) -> None:
        super().__init__(message, reason=reason, **fields)
        self.reason = reason


class ConfigError(BusError):
    """The bus is configured wrongly (missing secret in production, unreadable file)."""

    code = "config"
    exit_code = 8


class NotReplicated(BusUnavailable):
    """Redis took a write, but fewer replicas than MESSAGE_BUS_REDIS_MIN_REPLICAS confirmed
    it within MESSAGE_BUS_REDIS_REPLICA_TIMEOUT: a failover now could undo it. Transient: the
    delivery is retried instead of acked."""

    code = "unavailable"

    def __init__(self, message: str, *, acknowledged: int, required: int) -> None:
        super().__init__(message, component="redis", acknowledged=acknowledged, required=required)
        self.acknowledged = acknowledged
        self.required = required
