"""The logical message and the other models agents see (pydantic v2, the single schema).

Wire JSON uses the contract's names (``from``, ``correlation_id``...); input also accepts
camelCase (``correlationId``, ``maxRetries``...). Unknown fields are kept, not dropped, so a
1.x reader passes on what a newer writer added.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AliasChoices,
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

AGENT_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
TOPIC_PATTERN = r"^[a-z0-9][a-z0-9._/-]{0,127}$"
# The ids a sender may give: its message's own and its trace's.
MESSAGE_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}"
_AGENT_RE = re.compile(AGENT_ID_PATTERN)
_MESSAGE_ID_RE = re.compile(MESSAGE_ID_PATTERN)
_TOPIC_RE = re.compile(TOPIC_PATTERN)
BROADCAST = "*"
SCHEMA_VERSION = "1.0"
MAX_TTL_SECONDS = 4_294_967


def could_be_message_id(value: object) -> bool:
    """Whether a stored message may have this id: any text of 1-128 characters (messages
    from before the rule for given ids, or from older clients, keep theirs)."""
    if not isinstance(value, str) or not 0 < len(value) <= 128:
        return False
    return not any("\ud800" <= c <= "\udfff" for c in value)


def given_id_problem(value: str) -> str | None:
    """Why `value` cannot be an id a sender gives, or None. No whitespace, control, glob
    or brace characters: an id ends up in keys, logs and operators' shells."""
    if _MESSAGE_ID_RE.fullmatch(value):
        return None
    if any("\ud800" <= c <= "\udfff" for c in value):
        return "a lone surrogate: not unicode text"
    return (
        f"{value[:40]!r} is not an id: 1-128 letters, digits and '._:@/+=-', starting "
        "with a letter or digit"
    )


class Priority(StrEnum):
    low = "low"
    normal = "normal"
    high = "high"
    critical = "critical"

    @property
    def rank(self) -> int:
        """0 for critical .. 3 for low: smaller is served first."""
        return _PRIORITY_RANK[self]

    @property
    def queue(self) -> str:
        return f"bus.{self.value}"


_PRIORITY_RANK = {Priority.critical: 0, Priority.high: 1, Priority.normal: 2, Priority.low: 3}


class MessageType(StrEnum):
    request = "request"
    response = "response"
    event = "event"
    command = "command"
    query = "query"
    notification = "notification"
    broadcast = "broadcast"
    error = "error"


class Compression(StrEnum):
    none = "none"
    gzip = "gzip"
    brotli = "brotli"


class Status(StrEnum):
    queued = "queued"
    delivered = "delivered"
    read = "read"
    acked = "acked"
    retrying = "retrying"
    dead = "dead"
    expired = "expired"
    duplicate = "duplicate"


def check_agent_id(value: str) -> str:
    return _matching(
        value, "agent id", _AGENT_RE, "lowercase letters, digits, '.', '_', '-'; 1-64 characters"
    )


def check_topic(value: str) -> str:
    return _matching(
        value, "topic", _TOPIC_RE, "lowercase letters, digits, '.', '_', '/', '-'; 1-128 characters"
    )


def _matching(value: str, what: str, pattern: re.Pattern[str], rule: str) -> str:
    # fullmatch: with match, the pattern's "$" also matches before a final newline
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{what} {value!r} must match {pattern.pattern} ({rule})")
    return value


AgentId = Annotated[str, AfterValidator(check_agent_id)]
Topic = Annotated[str, AfterValidator(check_topic)]


def utcnow() -> datetime:
    return datetime.now(UTC)


# Input accepts snake_case and camelCase; output is always the contract's snake_case.
_INPUT_ALIASES = AliasGenerator(validation_alias=lambda name: AliasChoices(name, to_camel(name)))


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=_INPUT_ALIASES,
        populate_by_name=True,
        extra="allow",
        use_enum_values=False,
    )


class Signature(_Model):
    kid: str
    alg: str = "HMAC-SHA256"
    value: str


class Metadata(_Model):
    priority: Priority = Priority.normal
    # RabbitMQ's per-message expiry is a 32-bit count of milliseconds (~49.7 days).
    # Strict numbers and booleans: `true` is no ttl of 1 s, "10" no number, 1 no `true`.
    ttl: Annotated[float, Strict()] | None = Field(
        default=None,
        gt=0,
        le=MAX_TTL_SECONDS,
        allow_inf_nan=False,
        description="seconds; then never delivered",
    )
    encrypted: StrictBool = False
    compression: Compression = Compression.none
    retry_count: StrictInt = Field(default=0, ge=0, description="tries so far, kept by the bus")
    max_retries: StrictInt = Field(default=3, ge=0, le=100)
    dedup_key: str | None = Field(default=None, min_length=1, max_length=256)
    headers: dict[str, str] = Field(default_factory=dict)
    # The seed writes the topic label inside metadata; kept as a label when `to` is set.
    topic: Topic | None = None


class Message(_Model):
    """A message as agents see it. ``payload`` is plain JSON here; on the wire it may be an
    encoded string when ``metadata.compression``/``metadata.encrypted`` say so."""

    version: str = SCHEMA_VERSION
    id: str = Field(default="", description="UUID, set by the bus")
    sender: AgentId = Field(
        serialization_alias="from", validation_alias=AliasChoices("from", "sender", "from_")
    )
    to: str | None = None
    topic: Topic | None = None
    type: MessageType = MessageType.event
    timestamp: datetime | None = None
    payload: Any = None
    correlation_id: str | None = Field(default=None, max_length=128)
    reply_to: AgentId | None = None
    trace_id: str | None = Field(default=None, max_length=128)
    metadata: Metadata = Field(default_factory=Metadata)
    signature: Signature | None = None

    @field_validator("version")
    @classmethod
    def _version_1x(cls, value: str) -> str:
        if not re.fullmatch(r"1(\.\d+)?", value):
            raise ValueError(f"version {value!r} is not supported (this bus reads 1.x)")
        return value

    @field_validator("to")
    @classmethod
    def _to_is_agent_or_star(cls, value: str | None) -> str | None:
        return value if value in (None, BROADCAST) else check_agent_id(value)

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("timestamp must carry a timezone (RFC 3339, e.g. ...Z)")
        return value.astimezone(UTC) if value is not None else None

    @model_validator(mode="after")
    def _one_address(self) -> Message:
        if self.to == BROADCAST and self.type is not MessageType.broadcast:
            self.type = MessageType.broadcast
        if self.type is MessageType.broadcast:
            if self.to not in (None, BROADCAST):
                raise ValueError("a broadcast goes to everyone: leave 'to' empty or '*'")
            self.to = BROADCAST
            return self
        if self.to is None and self.topic is None:
            if self.metadata.topic is not None:
                self.topic = self.metadata.topic
            else:
                raise ValueError(
                    "no address: give 'to' (an agent), 'topic', or type 'broadcast' / to '*'"
                )
        return self

    @property
    def is_broadcast(self) -> bool:
        return self.to == BROADCAST

    @property
    def is_topic(self) -> bool:
        return self.to is None and self.topic is not None

    @property
    def priority(self) -> Priority:
        return self.metadata.priority

    def wire(self) -> dict[str, Any]:
        """JSON-ready dict with the contract's names (``from``, snake_case)."""
        return _wire_dump(self)


def _wire_dump(message: Message) -> dict[str, Any]:
    data = message.model_dump(mode="json", by_alias=True, exclude_none=True)
    meta = data.get("metadata", {})
    if not meta.get("headers"):
        meta.pop("headers", None)
    # exclude_none is for the bus's own unset fields: a sender's extra field set to null
    # is data and travels as it was given.
    data |= {k: None for k, v in (message.model_extra or {}).items() if v is None}
    meta |= {k: None for k, v in (message.metadata.model_extra or {}).items() if v is None}
    return data


class ReceivedMessage(Message):
    """A message read from an inbox, with its lease and check results."""

    delivery_count: int = 1
    lease_expires_at: datetime | None = None
    verified: bool = Field(
        default=False, description="the signature checked out against the bus's keys"
    )
    decode_error: str | None = Field(
        default=None, description="why the payload is withheld (failed check), if it is"
    )


def _field_names(model: type[BaseModel]) -> frozenset[str]:
    """Every name a field of `model` is known by: its own, camelCase, its aliases."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        names |= {name, to_camel(name)}
        if field.serialization_alias:
            names.add(field.serialization_alias)
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        names |= {c for c in choices if isinstance(c, str)}
    return frozenset(names)


# Names an extra (unknown) field of a message may not take: a stored extra by one of them
# would shadow what the bus or the reader sets (`decode_error`, `verified`, `sender`...).
RESERVED_FIELD_NAMES = _field_names(ReceivedMessage)
READER_FIELD_NAMES = RESERVED_FIELD_NAMES - _field_names(Message)


class Receipt(_Model):
    """What a send returns."""

    id: str
    status: Status
    queue: str
    trace_id: str | None = None
    duplicate_of: str | None = None


class Subscription(_Model):
    agent: AgentId
    topic: Topic
    types: list[MessageType] | None = None
    priorities: list[Priority] | None = None

    def matches(self, message_type: str, priority: str) -> bool:
        return (not self.types or message_type in self.types) and (
            not self.priorities or priority in self.priorities
        )


class MessageStatus(_Model):
    id: str
    status: Status
    attempts: int = 0
    queue: str | None = None
    sender: str | None = Field(default=None, serialization_alias="from")
    recipients: int | None = None
    # Recipients that acked: a message to several is `acked` once all of them have.
    acks: int = 0
    reason: str | None = None
    error: str | None = None
    timestamps: dict[str, datetime] = Field(default_factory=dict)

    @classmethod
    def from_record(cls, message_id: str, raw: dict[str, str], now_ms: int) -> MessageStatus:
        """The status from its Redis hash (bus.keys `status:{id}`), as of `now_ms`."""
        status = raw.get("status", "queued")
        expires = raw.get("expires_at")
        if status in ("queued", "retrying") and expires and int(expires) < now_ms:
            # Past its ttl and not delivered: the broker dead-letters it; report what it is.
            status, raw = "expired", {**raw, "reason": raw.get("reason") or "expired"}
        stamps = {
            name.removesuffix("_at"): datetime.fromtimestamp(float(value) / 1000, UTC)
            for name, value in raw.items()
            if name.endswith("_at") and _is_ms(value)
        }
        return cls(
            id=message_id,
            status=Status(status),
            attempts=int(raw.get("attempts") or 0),
            queue=raw.get("queue"),
            sender=raw.get("from"),
            recipients=int(raw["recipients"]) if raw.get("recipients") else None,
            acks=int(raw.get("acks") or 0),
            reason=raw.get("reason") or None,
            error=raw.get("error") or None,
            timestamps=stamps,
        )


def _is_ms(value: str) -> bool:
    """Status stamps are ms since the epoch, with µs decimals (older entries: whole ms)."""
    whole, _, fraction = value.partition(".")
    return whole.isdigit() and (not fraction or fraction.isdigit())


class DeadLetter(_Model):
    id: str
    queue: str
    reason: str
    error: str | None = None
    attempts: int = 0
    replays: int = 0
    dead_at: datetime | None = None
    message: dict[str, Any] | None = None


MAX_CHOSEN_DEAD_LETTERS = 1000


class DeadLetterChoice(BaseModel):
    """Which dead letters to replay or purge, as every entrance takes it: a list of ids, or
    all of them (`true` only: a string such as "false" is refused, not taken as true)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # 256: the id of a dead letter the bus could not read is its task's (`<id>:<agent>`).
    ids: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        default=None, max_length=MAX_CHOSEN_DEAD_LETTERS
    )
    all: bool = False


class AckResult(_Model):
    acked: list[str] = Field(default_factory=list)
    not_found: list[str] = Field(default_factory=list)


class AgentInfo(_Model):
    id: str
    registered_at: datetime | None = None
    last_seen: datetime | None = None
    inbox_depth: int | None = Field(
        default=0, description="messages waiting; shown for one's own inbox, or to admins"
    )
