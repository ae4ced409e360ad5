"""The dead-letter queue ``bus.dead_letter``: list, show, replay, purge.

Messages are taken with ``basic.get`` without ack; whatever is not replayed or purged goes
back when the channel closes, in its order. Listing therefore never consumes anything,
and nothing in the queue is ever executed as a task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import redis
from kombu.message import Message as AmqpMessage

from bus import topology
from bus.broker import broker_errors
from bus.errors import BusUnavailable, NotFound
from bus.runtime import Runtime
from bus.schema import DeadLetter, Priority
from bus.topology import DEAD_LETTER_QUEUE, DELIVER_TASK

logger = logging.getLogger(__name__)

REPLAYS_HEADER = "x-bus-replays"
# Causes worth another try; bad signatures, expiry, malformed or denied messages are not.
TRANSIENT_REASONS = frozenset(
    {"retries_exhausted", "unavailable", "handler_failed", "delivery_limit"}
)


class _Entry:
    """One broker message in the dead-letter queue (a batch task holds several wires)."""

    def __init__(self, amqp: AmqpMessage) -> None:
        self.amqp = amqp
        self.headers: dict[str, Any] = dict(amqp.headers or {})
        try:
            body = amqp.decode()
        except Exception:  # noqa: BLE001 - any undecodable body is still listed, as such
            body = None
        args, kwargs = ([], {}) if not isinstance(body, list) or len(body) < 2 else body[:2]
        first = args[0] if args else None
        self.task = self.headers.get("task")
        self.is_batch = self.task == topology.DELIVER_BATCH_TASK
        # A worker agent's handler task carries (agent, wire).
        self.agent: str | None = None
        if self.task == topology.HANDLE_TASK and len(args) >= 2:
            self.agent, first = str(args[0]), args[1]
        wires = first if self.is_batch and isinstance(first, list) else [first]
        self.wires: list[dict[str, Any]] = [w for w in wires if isinstance(w, dict)]
        # A task whose argument is no bus message is still listed (and purgeable) by its
        # Celery task id, with the raw argument kept for inspection.
        self.malformed = not self.wires
        if self.malformed:
            self.wires = [{"id": str(self.headers.get("id") or "unknown"), "raw": first}]
        self.last_error: str | None = (
            (kwargs or {}).get("last_error") if isinstance(kwargs, dict) else None
        )
        deaths = self.headers.get("x-death") or [{}]
        self.death: dict[str, Any] = deaths[0] if isinstance(deaths, list) and deaths else {}

    @property
    def ids(self) -> list[str]:
        return [str(w.get("id")) for w in self.wires]


class DeadLetterQueue:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @contextmanager
    def _taken(self) -> Iterator[Callable[[], _Entry | None]]:
        """Yields a getter of unacked entries; unsettled ones return on exit."""
        broker = self.runtime.broker
        broker.ensure_topology()
        with (
            self._one_reader(),
            broker_errors("read the dead letters"),
            broker.connection() as conn,
        ):
            channel = conn.channel()
            queue = topology.dead_letter_queue(self.runtime.settings)(channel)
            try:

                def get() -> _Entry | None:
                    message = queue.get(no_ack=False, accept=["json"])
                    return _Entry(message) if message is not None else None

                yield get
            finally:
                channel.close()

    @contextmanager
    def _one_reader(self) -> Iterator[None]:
        """Dead letters are read by taking them off the queue and putting them back, so a
        listing running beside a replay (beat's, another operator's) would miss what the
        other holds: one reader at a time across processes, by a Redis lock. Without
        Redis the read goes ahead unlocked (listing must work while Redis is down)."""
        lock = self.runtime.redis.lock(
            self.runtime.keys.dead_letters_lock, timeout=120, blocking_timeout=30
        )
        try:
            held = bool(lock.acquire())
        except redis.RedisError as exc:
            logger.warning("dead letters read without the readers' lock: %s", exc)
            held = False
        try:
            yield
        finally:
            if held:
                try:
                    lock.release()
                except redis.RedisError:  # expired or Redis gone: nothing left to undo
                    pass

    def _depth(self) -> int:
        broker = self.runtime.broker
        broker.ensure_topology()
        with broker_errors("count the dead letters"), broker.connection() as conn:
            channel = conn.channel()
            try:
                _, count, _ = channel.queue_declare(DEAD_LETTER_QUEUE, passive=True)
                return int(count)
            finally:
                channel.close()

    def depth(self) -> int:
        return self._depth()

    def _describe(
        self, entry: _Entry, wire: dict[str, Any], statuses: dict[str, dict[str, str]]
    ) -> DeadLetter:
        message_id = str(wire.get("id"))
        status = statuses.get(message_id, {})
        meta = wire.get("metadata") or {}
        death = entry.death
        reason = status.get("reason") or ""
        if status.get("status") not in ("dead", "expired") or not reason:
            reason = self._derive_reason(entry, wire)
        dead_at = death.get("time")
        replays = max(int(entry.headers.get(REPLAYS_HEADER) or 0), int(status.get("replays") or 0))
        return DeadLetter(
            id=message_id,
            queue=str(death.get("queue") or Priority(meta.get("priority", "normal")).queue),
            reason=reason,
            error=status.get("error") or entry.last_error,
            attempts=max(
                int(status.get("attempts") or 0), int(entry.headers.get("retries") or 0) + 1
            ),
            replays=replays,
            dead_at=dead_at if isinstance(dead_at, datetime) else None,
            message=wire,
        )

    def _derive_reason(self, entry: _Entry, wire: dict[str, Any]) -> str:
        """Why a message died, from what it carries, when Redis could not record it."""
        death_reason = str(entry.death.get("reason") or "rejected")
        if death_reason == "expired":
            return "expired"
        if entry.malformed:
            return "malformed"
        if not self.runtime.codec.is_valid(wire):
            return "bad_signature"
        meta = wire.get("metadata") or {}
        if int(entry.headers.get("retries") or 0) >= int(meta.get("max_retries", 3)):
            return "retries_exhausted"
        return death_reason  # rejected | maxlen | delivery_limit

    def _statuses(self, entries: list[_Entry]) -> dict[str, dict[str, str]]:
        ids = [i for e in entries for i in e.ids]
        if not ids:
            return {}
        try:
            pipe = self.runtime.redis.pipeline(transaction=False)
            for message_id in ids:
                pipe.hgetall(self.runtime.keys.status(message_id))
            return dict(zip(ids, pipe.execute(), strict=True))
        except Exception:  # noqa: BLE001 - listing must work while Redis is down
            logger.warning("dead letters listed without Redis status (Redis unavailable)")
            return {}

    def peek(self, limit: int = 100) -> list[DeadLetter]:
        """Up to `limit` dead letters, oldest first, without consuming them."""
        out: list[DeadLetter] = []
        with self._taken() as get:
            while len(out) < limit and (entry := get()) is not None:
                statuses = self._statuses([entry])
                out += [self._describe(entry, w, statuses) for w in entry.wires]
        self._record_broker_deaths(out)
        return out[:limit]

    def _record_broker_deaths(self, letters: list[DeadLetter]) -> None:
        """Messages the broker dead-lettered (ttl) never reached a worker to record it."""
        expired = [d.id for d in letters if d.reason == "expired"]
        try:
            self.runtime.store.advance_status(expired, "expired", reason="expired")
        except BusUnavailable:
            pass

    def show(self, message_id: str) -> DeadLetter:
        with self._taken() as get:
            for _ in range(self._depth() + 1):
                entry = get()
                if entry is None:
                    break
                for wire in entry.wires:
                    if str(wire.get("id")) == message_id:
                        return self._describe(entry, wire, self._statuses([entry]))
        raise NotFound(f"no dead letter with id {message_id!r}", id=message_id)

    def _settle(
        self,
        ids: list[str] | None,
        action: Callable[[_Entry, dict[str, Any]], None] | None,
        select: Callable[[DeadLetter], bool] | None = None,
        limit: int | None = None,
    ) -> list[str]:
        """Applies `action` to the chosen wires (all when ids is None) and removes their
        broker messages; a batch entry's unchosen wires go back to the dead letters."""
        wanted = None if ids is None else set(ids)
        done: list[str] = []
        with self._taken() as get:
            for _ in range(self._depth()):
                if limit is not None and len(done) >= limit:
                    break
                entry = get()
                if entry is None:
                    break
                statuses = self._statuses([entry]) if select else {}
                chosen: list[dict[str, Any]] = []
                kept: list[dict[str, Any]] = []
                for wire in entry.wires:
                    ok = wanted is None or str(wire.get("id")) in wanted
                    if ok and select is not None:
                        ok = select(self._describe(entry, wire, statuses))
                    (chosen if ok else kept).append(wire)
                if not chosen and entry.wires:
                    continue  # stays, returned when the channel closes
                for wire in chosen:
                    if action is not None:
                        action(entry, wire)
                    done.append(str(wire.get("id")))
                if kept:
                    self._redeadletter(entry, kept)
                entry.amqp.ack()
        return done

    def _redeadletter(self, entry: _Entry, wires: list[dict[str, Any]]) -> None:
        with broker_errors("return dead letters"), self.runtime.broker.connection() as conn:
            producer = conn.Producer()
            producer.publish(
                [[wires], {}, {}],
                exchange=topology.DLX,
                routing_key="",
                serializer="json",
                headers=entry.headers,
                delivery_mode=2,
                retry=True,
            )

    def replay(
        self,
        ids: list[str] | None,
        select: Callable[[DeadLetter], bool] | None = None,
        limit: int | None = None,
    ) -> list[str]:
        """Replays the chosen dead letters (all when ids is None), at most `limit` of them."""
        return self._settle(ids, self._replay_one, select, limit)

    def _replay_one(self, entry: _Entry, wire: dict[str, Any]) -> None:
        replays = int(entry.headers.get(REPLAYS_HEADER) or 0) + 1
        message_id = str(wire.get("id"))
        meta = wire.get("metadata") or {}
        if entry.agent is not None:
            self.runtime.broker.publish(
                topology.HANDLE_TASK,
                [entry.agent, wire],
                queue=topology.agent_queue(self.runtime.settings, entry.agent),
                task_id=f"{message_id}:{entry.agent}",
                headers={REPLAYS_HEADER: replays},
                summary=f"<message {message_id} for {entry.agent} replay {replays}>",
            )
            self._record_replay(message_id, replays)
            return
        queue = str(entry.death.get("queue") or Priority(meta.get("priority", "normal")).queue)
        if queue not in topology.PRIORITY_QUEUES:
            queue = Priority(meta.get("priority", "normal")).queue
        self.runtime.broker.publish(
            DELIVER_TASK,
            [wire],
            queue=queue,
            task_id=message_id,
            headers={REPLAYS_HEADER: replays},
            summary=f"<message {message_id} replay {replays}>",
        )
        self._record_replay(message_id, replays)

    def _record_replay(self, message_id: str, replays: int) -> None:
        try:
            self.runtime.store.advance_status(
                [message_id], "queued", force=True, replays=replays, reason="", error=""
            )
        except BusUnavailable:
            logger.warning("replayed %s but could not record its status", message_id)

    def purge(self, ids: list[str] | None, limit: int | None = None) -> list[str]:
        return self._settle(ids, None, limit=limit)
