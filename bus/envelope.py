"""The envelope: a signed message as it travels in a task and as it sits in Redis.

The unit is the signed wire JSON *text*, made once at send (bus.sender). It rides in its
Celery task as one JSON string argument and is stored as that same text in inboxes and
history, so no serializer on the way (kombu's JSON object hook, Celery's, Flower's) ever
sees the payload as structure: a payload shaped like a serializer tag (``{"__type__":
...}``) arrives as it was sent.

Reading is total: `Envelope.parse` returns an envelope whose every field the bus relies on
has its type, or raises PermanentFailure(reason="malformed") saying what is wrong. Nothing
that reads tasks, dead letters, inboxes or history lets anything else escape.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from bus.errors import PermanentFailure
from bus.schema import BROADCAST, Priority


def _malformed(why: str) -> PermanentFailure:
    return PermanentFailure(f"not a bus message: {why}", reason="malformed")


@dataclass(frozen=True, slots=True)
class Envelope:
    text: str  # the signed wire JSON exactly as signed and sent
    data: dict[str, Any]  # its parsed form (verify and decode read this)
    id: str
    sender: str
    timestamp_ms: int
    priority: Priority

    @classmethod
    def parse(cls, raw: Any) -> Envelope:
        """From a task argument or a stored entry. Task arguments of buses before the
        envelope were objects: they are read too, re-encoded as they came."""
        if isinstance(raw, bytes | bytearray | memoryview):
            try:
                raw = bytes(raw).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _malformed(f"not UTF-8 ({exc})") from None
        if isinstance(raw, dict):
            try:
                raw = orjson.dumps(raw).decode()
            except (orjson.JSONEncodeError, TypeError) as exc:
                raise _malformed(f"holds values JSON cannot carry ({exc})") from None
        if not isinstance(raw, str):
            raise _malformed(f"a {type(raw).__name__}, not the message's JSON text")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _malformed(f"not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise _malformed(f"a JSON {type(data).__name__}, not an object")
        message_id, sender = data.get("id"), data.get("from")
        if not isinstance(message_id, str) or not message_id or len(message_id) > 128:
            raise _malformed("no valid id")
        if not isinstance(sender, str) or not sender:
            raise _malformed(f"message {message_id} has no sender")
        meta = data.get("metadata")
        if meta is None:
            meta = data["metadata"] = {}
        if not isinstance(meta, dict):
            raise _malformed(f"message {message_id} has metadata that is not an object")
        try:
            priority = Priority(meta.get("priority", "normal"))
        except ValueError:
            raise _malformed(f"message {message_id} has an unknown priority") from None
        return cls(raw, data, message_id, sender, _timestamp_ms(data, message_id), priority)

    @property
    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = self.data["metadata"]
        return meta

    @property
    def to(self) -> str | None:
        return _str_or_none(self.data.get("to"))

    @property
    def topic(self) -> str | None:
        return _str_or_none(self.data.get("topic"))

    @property
    def is_broadcast(self) -> bool:
        return self.to == BROADCAST

    @property
    def type(self) -> str:
        return _str_or_none(self.data.get("type")) or "event"

    @property
    def trace_id(self) -> str | None:
        return _str_or_none(self.data.get("trace_id"))

    @property
    def correlation_id(self) -> str | None:
        return _str_or_none(self.data.get("correlation_id"))

    @property
    def reply_to(self) -> str | None:
        return _str_or_none(self.data.get("reply_to"))

    @property
    def ttl(self) -> float | None:
        ttl = self.metadata.get("ttl")
        return float(ttl) if isinstance(ttl, int | float) and not isinstance(ttl, bool) else None

    @property
    def expires_ms(self) -> int | None:
        ttl = self.ttl
        return None if ttl is None else self.timestamp_ms + int(ttl * 1000)

    @property
    def max_retries(self) -> int:
        value = self.metadata.get("max_retries", 3)
        return value if isinstance(value, int) and not isinstance(value, bool) else 3

    def summary(self) -> str:
        """What logs and Flower show of it (never the payload)."""
        return f"<message {self.id} {self.type} from {self.sender}>"


def parse_timestamp_ms(value: Any) -> int:
    """RFC 3339 text -> ms since the epoch; ValueError when it is not one."""
    if not isinstance(value, str):
        raise ValueError(f"timestamp {value!r} is not RFC 3339 text")
    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)


def _timestamp_ms(data: dict[str, Any], message_id: str) -> int:
    try:
        return parse_timestamp_ms(data.get("timestamp"))
    except (ValueError, OverflowError):
        raise _malformed(f"message {message_id} has no valid timestamp") from None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _without_tries(wire: str) -> dict[str, Any] | None:
    """A wire's message without the bus's count of tries and the signature over it; None
    when it is no message."""
    try:
        data = orjson.loads(wire)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("metadata"), dict):
        return None
    data.pop("signature", None)
    data["metadata"].pop("retry_count", None)
    return data


def same_message(stored: str, other: str) -> bool:
    """Whether two wires are one message at different tries: equal but for the bus's own
    count of tries and the signature over it (a retry re-signs the wire with its count, so
    the dead letter of a retried message is not the text its inbox holds)."""
    if stored == other:
        return True
    first, second = _without_tries(stored), _without_tries(other)
    return first is not None and first == second


def message_digest(wire: str) -> str:
    """A digest equal for the wires `same_message` finds equal (SHA-256 of the message
    without its tries, keys sorted); of the text itself when it is no message."""
    data = _without_tries(wire)
    text = wire.encode() if data is None else orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(text).hexdigest()
