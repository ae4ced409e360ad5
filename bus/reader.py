"""The receiving side: leasing reads with long-poll, history, and request/response waits.

Stored wire JSON is verified first, then decrypted and decompressed for the reader.
Decoding is total: an entry that cannot be read (corrupt, or from a writer this reader
does not understand) is handed over flagged with `decode_error`, so the reader can ack or
report it, and never makes the rest of an inbox or a history unreadable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pydantic

from bus.envelope import Envelope
from bus.errors import BusError, NotFound, PermanentFailure
from bus.hooks import Hooks
from bus.longpoll import poll
from bus.redis_conn import redis_errors
from bus.runtime import Runtime
from bus.schema import (
    READER_FIELD_NAMES,
    MessageType,
    Metadata,
    ReceivedMessage,
    Status,
    check_agent_id,
)
from bus.store import Leased
from bus.validation import describe

logger = logging.getLogger(__name__)


# Pub/sub connections kept for the next request's wait (a fresh one per request was a
# TCP connect and its handshake on every round trip).
IDLE_PUBSUBS = 16


class Reader:
    def __init__(self, runtime: Runtime, hooks: Hooks | None = None) -> None:
        self.runtime = runtime
        self.hooks = hooks or Hooks()
        self._idle: list[Any] = []
        self._idle_lock = threading.Lock()

    def decode(
        self,
        wire: str | dict[str, Any],
        *,
        delivery_count: int = 1,
        lease_expires_ms: int | None = None,
        entry_id: str | None = None,
    ) -> ReceivedMessage:
        lease = datetime.fromtimestamp(lease_expires_ms / 1000, UTC) if lease_expires_ms else None
        try:
            data = dict(Envelope.parse(wire).data)
        except PermanentFailure as exc:
            return _unreadable(entry_id, None, exc.message, delivery_count, lease)
        codec = self.runtime.codec
        verified = codec.is_valid(data)
        meta = data.get("metadata") or {}
        extra: dict[str, Any] = {}
        try:
            if not verified:
                raise BusError("signature does not verify; payload withheld")
            data["payload"] = codec.decode_payload(
                data["id"],
                data.get("payload"),
                meta.get("compression", "none"),
                bool(meta.get("encrypted")),
            )
        except BusError as exc:
            # One bad message must not make the whole inbox unreadable: hand it over
            # flagged, with its payload withheld, so the reader can ack or report it.
            data["payload"] = None
            extra["decode_error"] = exc.message
        try:
            # What the reader sets is never taken from the stored message.
            stored = {k: v for k, v in data.items() if k not in READER_FIELD_NAMES}
            return ReceivedMessage.model_validate(
                {
                    **stored,
                    **extra,
                    "delivery_count": delivery_count,
                    "lease_expires_at": lease,
                    "verified": verified,
                }
            )
        except pydantic.ValidationError as exc:
            problem = f"stored message does not fit the schema: {describe(exc)}"
            return _unreadable(
                entry_id or data.get("id"), data.get("from"), problem, delivery_count, lease
            )

    def _decode_leased(self, leased: list[Leased]) -> list[ReceivedMessage]:
        return [
            self.decode(
                item.wire,
                delivery_count=item.delivery_count,
                lease_expires_ms=item.lease_expires_ms,
                entry_id=item.id,
            )
            for item in leased
        ]

    def read(self, agent: str, limit: int, wait: float) -> list[ReceivedMessage]:
        store = self.runtime.store
        lease = self.runtime.settings.visibility_timeout
        leased = store.lease(agent, limit, lease)
        if not leased and wait > 0:
            leased = self._wait_and_lease(agent, limit, lease, wait)
        if leased:
            store.advance_status([item.id for item in leased], Status.read.value)
        messages = self._decode_leased(leased)
        self.hooks.read(agent, messages)
        return messages

    def _wait_and_lease(self, agent: str, limit: int, lease: float, wait: float) -> list[Leased]:
        store = self.runtime.store
        with self._subscribed(self.runtime.keys.inbox_channel(agent), "wait for messages") as ps:
            return poll(
                lambda: store.lease(agent, limit, lease),
                lambda seconds: ps.get_message(timeout=seconds),
                wait,
            )

    @contextmanager
    def _subscribed(self, channel: str, action: str) -> Iterator[Any]:
        """A pub/sub connection listening on `channel` (subscribed before any look)."""
        with redis_errors(action):
            pubsub = self.runtime.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(channel)
                yield pubsub
            finally:
                pubsub.close()

    def history(
        self, agent: str, limit: int, since_ms: int | None, type: str | None
    ) -> list[ReceivedMessage]:
        # Filtering by type happens after the range read; history is capped per agent, so
        # scanning it whole in the worst case is bounded.
        fetch = limit if type is None else self.runtime.settings.history_limit
        out: list[ReceivedMessage] = []
        for wire in self.runtime.store.history(agent, fetch, since_ms):
            message = self.decode(wire)
            if type is not None and message.type.value != type:
                continue
            out.append(message)
            if len(out) >= limit:
                break
        return out

    @contextmanager
    def reply_waiter(self, request_id: str, requester: str) -> Iterator[_ReplyWaiter]:
        """Subscribed to the request's reply channel for `requester` (before the request is
        sent), on a pub/sub connection kept from an earlier request when there is one."""
        channel = self.runtime.keys.reply_channel(requester, request_id)
        with redis_errors("wait for a response"):
            pubsub = self._pubsub()
            kept = False
            try:
                pubsub.subscribe(channel)
                yield _ReplyWaiter(self.runtime, pubsub, request_id, requester, channel)
                pubsub.unsubscribe(channel)
                kept = self._keep(pubsub)
            finally:
                if not kept:
                    pubsub.close()

    def _pubsub(self) -> Any:
        pool = self.runtime.redis.connection_pool
        with self._idle_lock:
            while self._idle:
                pubsub = self._idle.pop()
                if pubsub.connection_pool is pool:
                    return pubsub
                pubsub.close()  # from before a reconnect or a fork
        return self.runtime.redis.pubsub(ignore_subscribe_messages=True)

    def _keep(self, pubsub: Any) -> bool:
        with self._idle_lock:
            if len(self._idle) >= IDLE_PUBSUBS:
                return False
            self._idle.append(pubsub)
            return True

    def close(self) -> None:
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for pubsub in idle:
            pubsub.close()

    def take(self, agent: str, message_id: str, sender: str | None = None) -> ReceivedMessage:
        """Removes one message from an inbox (read + ack, one round trip) and returns it;
        with `sender`, only if it is from that agent."""
        wire = self.runtime.store.take(agent, message_id, sender)
        if wire is None:
            whose = f" from {sender}" if sender else ""
            raise NotFound(f"message {message_id}{whose} is not in {agent}'s inbox", id=message_id)
        return self.decode(wire, entry_id=message_id)


class _ReplyWaiter:
    def __init__(
        self, runtime: Runtime, pubsub: Any, request_id: str, requester: str, channel: str
    ) -> None:
        self.runtime = runtime
        self.pubsub = pubsub
        self.request_id = request_id
        self.requester = requester
        self.channel = channel
        self._woken_with: str | None = None
        self._passed: set[str] = set()

    def pass_over(self, response_id: str) -> None:
        """`response_id` is not the answer (another sender's, or gone): wait for the next."""
        self._passed.add(response_id)
        self._woken_with = None

    def _look(self) -> str | None:
        # The wake-up carries the response's id (the DELIVER script publishes what it
        # stores under the reply key): no second look in Redis for it.
        if self._woken_with:
            return self._woken_with
        found = self.runtime.store.reply_for(self.requester, self.request_id)
        return None if found in self._passed else found

    def _wait(self, seconds: float) -> None:
        # Reads until this channel's wake-up comes or the time is up: what else arrives
        # (the subscription's own confirmation, on a kept connection a wake-up or the
        # unsubscribe of its previous request) is no reason to look in Redis again.
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            item = self.pubsub.get_message(timeout=left)
            if item and item.get("channel") == self.channel and item.get("data"):
                if str(item["data"]) in self._passed:
                    continue
                self._woken_with = str(item["data"])
                return

    def wait(self, timeout: float, *, look_first: bool = True) -> str | None:
        """The id of the answer's entry once one is there, None after `timeout`.
        `look_first=False` for a request sent after the waiter subscribed: its answer
        cannot be there before it, so the wait starts with the wake-up, not a look."""
        with redis_errors("wait for a response"):
            return poll(self._look, self._wait, timeout, look_first=look_first)


def _unreadable(
    entry_id: Any, sender: Any, problem: str, delivery_count: int, lease: datetime | None
) -> ReceivedMessage:
    """A stored entry the bus cannot read, as a message a reader can see and ack."""
    try:
        sender = check_agent_id(sender)
    except ValueError:
        sender = "unknown"
    return ReceivedMessage.model_construct(
        id=str(entry_id or "unknown"),
        sender=sender,
        to=None,
        topic=None,
        type=MessageType.error,
        payload=None,
        metadata=Metadata(),
        delivery_count=delivery_count,
        lease_expires_at=lease,
        verified=False,
        decode_error=f"unreadable entry: {problem}",
    )
