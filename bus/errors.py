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


class InboxFull(LimitExceeded):
    """A recipient's inbox holds as many messages as it may; nothing was sent."""

    code = "inbox_full"


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


class UnknownAgent(NotFound):
    """A recipient that has never connected (and the sender's allowance for such is used)."""

    code = "unknown_agent"


class NothingToReplay(BusError):
    """A worker agent's dead letter whose message is not there to run again: handled or
    purged since, past STATUS_RETENTION, being handled already, or a copy that is not it."""

    code = "nothing_to_replay"
    exit_code = 5

    @classmethod
    def of(cls, message_id: str, why: str) -> NothingToReplay:
        return cls(f"nothing to replay for {message_id}: {why}", id=message_id)


class BusUnavailable(BusError):
    """Redis or the broker cannot be reached; transient, retry later."""

    code = "unavailable"
    exit_code = 6


class _WithReason(BusError):
    """An error whose cause is one word, `reason` ("bad_signature", "expired", ...), kept
    apart from the message: callers decide by it (dead-letter or not), never by the text."""

    def __init__(self, message: str, *, reason: str, **fields: Any) -> None:
        super().__init__(message, reason=reason, **fields)
        self.reason = reason


class SecurityError(_WithReason):
    """A message failed an integrity or safety check (signature, replay, bomb, tamper)."""

    code = "security"
    exit_code = 7


class ConfigError(BusError):
    """The bus is configured wrongly (missing secret in production, unreadable file)."""

    code = "config"
    exit_code = 8


class ServicesError(BusError):
    """A local development service (Redis, RabbitMQ, the multi-node stack) cannot be
    installed, started or reached."""

    code = "services"
    exit_code = 10


class RequestTimeout(BusError):
    """No response to a request came in time (the request itself was sent)."""

    code = "timeout"
    exit_code = 9


class PermanentFailure(_WithReason):
    """A message can never be delivered as it is; it is dead-lettered with `reason`."""

    code = "permanent_failure"


# Why a message is dead. The replay job replays exactly the transient causes: whatever
# healed since (Redis or the broker back, a handler fixed) can succeed on another try; a
# permanent cause fails the same way every time.
TRANSIENT_REASONS = frozenset(
    {
        "retries_exhausted",  # Redis or the broker stayed unavailable through every retry
        "unavailable",  # the same, recorded before the retries ran out
        "handler_failed",  # a worker agent's handler raised on every attempt
        "delivery_limit",  # the quorum queue's redelivery limit (workers kept dying)
    }
)
PERMANENT_REASONS = frozenset(
    {
        "bad_signature",  # no key of the bus verifies it: tampered, or signed elsewhere
        "malformed",  # not a bus message at all (undecodable body, missing fields)
        "expired",  # past its ttl
        "stale",  # older than the replay window
        "bad_timestamp",  # from the future beyond the allowed clock skew
        "handler_crashed",  # its handler killed the worker process again and again
        "reply_refused",  # the bus refused its handler's answer (too big, denied)
        "undecodable",  # signature fine, payload cannot be decrypted or inflated
        "rejected",  # refused without a recorded cause (e.g. an unknown task name)
    }
)


def is_transient_reason(reason: str) -> bool:
    return reason in TRANSIENT_REASONS


class NotReplicated(BusUnavailable):
    """Redis took a write, but fewer replicas than MESSAGE_BUS_REDIS_MIN_REPLICAS confirmed
    it within MESSAGE_BUS_REDIS_REPLICA_TIMEOUT: a failover now could undo it. Transient: the
    delivery is retried instead of acked."""

    code = "unavailable"

    def __init__(self, message: str, *, acknowledged: int, required: int) -> None:
        super().__init__(message, component="redis", acknowledged=acknowledged, required=required)
        self.acknowledged = acknowledged
        self.required = required
