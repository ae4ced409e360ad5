"""The dead-letter queue ``bus.dead_letter``: list, show, replay, purge.

Messages are taken with ``basic.get`` without ack; whatever is not replayed or purged goes
back when the channel closes, in its order. Listing therefore never consumes anything,
and nothing in the queue is ever executed as a task.

Reading is total: a body is decoded by a JSON reader with no object hook (a payload shaped
like a serializer tag stays data), each message in it by `Envelope.parse`; whatever cannot
be read is listed as a `malformed` dead letter under its task id, purgeable, with what was
wrong, and never stops the listing, a replay or the entries behind it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from kombu.message import Message as AmqpMessage

from bus import topology
from bus.broker import broker_errors
from bus.envelope import Envelope
from bus.errors import (
    BusError,
    BusUnavailable,
    InboxFull,
    NotFound,
    NothingToReplay,
    PermanentFailure,
    SecurityError,
)
from bus.handler_runs import RUN_OF
from bus.runtime import Runtime
from bus.schema import DeadLetter, check_agent_id
from bus.topology import DEAD_LETTER_QUEUE, DELIVER_TASK

logger = logging.getLogger(__name__)

# What a dead letter's status may still say when no worker could record its death.
_BEFORE_DEATH = ("queued", "retrying")

# A replayed letter whose message has these keeps them: its delivery repeats nothing for
# the recipients it reached, and `acked` must not go back.
_DELIVERED_ALREADY = ("delivered", "read", "acked")

REPLAYS_HEADER = "x-bus-replays"
MAX_LISTED = 1000  # dead letters an MCP or dashboard listing shows at most
READERS_WAIT = 30.0  # seconds a reader waits for another to put the dead letters back
RAW_PREVIEW = 200  # characters of an unreadable argument shown in a listing


@dataclass(frozen=True, slots=True)
class _Unreadable:
    """A part of a dead-lettered task that is no bus message."""

    id: str
    problem: str
    preview: str


def _task_args(amqp: AmqpMessage) -> tuple[list[Any], dict[str, Any]]:
    """(args, kwargs) of a Celery task message, read without any object hook; raises
    PermanentFailure when the body is no task message."""
    if amqp.content_type not in ("application/json", None, ""):
        raise PermanentFailure(f"body is {amqp.content_type}, not JSON", reason="malformed")
    try:
        body = json.loads(amqp.body)
    except (ValueError, TypeError, RecursionError) as exc:
        raise PermanentFailure(f"body is not JSON ({exc})", reason="malformed") from None
    if isinstance(body, dict):  # task protocol 1
        body = [body.get("args"), body.get("kwargs")]
    if not isinstance(body, list) or not body or not isinstance(body[0], list):
        raise PermanentFailure("body is not a task's [args, kwargs, ...]", reason="malformed")
    kwargs = body[1] if len(body) > 1 and isinstance(body[1], dict) else {}
    return body[0], kwargs


class _Entry:
    """One broker message in the dead-letter queue (a batch task holds several messages)."""

    def __init__(self, amqp: AmqpMessage) -> None:
        self.amqp = amqp
        self.headers: dict[str, Any] = dict(amqp.headers or {})
        self.task = _text(self.headers.get("task") or "")
        self.is_batch = self.task == topology.DELIVER_BATCH_TASK
        self.agent: str | None = None  # a worker agent's handler task carries (agent, wire)
        task_id = _text(self.headers.get("id") or "unknown")
        self.items: list[Envelope | _Unreadable] = []
        self.last_error: str | None = None
        try:
            args, kwargs = _task_args(amqp)
        except PermanentFailure as exc:
            self.items = [_Unreadable(task_id, _text(exc.message), _preview(amqp.body))]
            args, kwargs = [], {}
        error = kwargs.get("last_error")
        self.last_error = _text(error) if isinstance(error, str) else None
        if not args:
            if not self.items:
                self.items = [_Unreadable(task_id, "task has no arguments", "")]
        else:
            first = args[0]
            if self.task == topology.HANDLE_TASK and len(args) >= 2 and _is_agent(args[0]):
                self.agent, first = args[0], args[1]
            raws = first if self.is_batch and isinstance(first, list) else [first]
            for n, raw in enumerate(raws):
                try:
                    self.items.append(Envelope.parse(raw))
                except PermanentFailure as exc:
                    part = task_id if len(raws) == 1 else f"{task_id}[{n}]"
                    self.items.append(_Unreadable(part, _text(exc.message), _preview(raw)))
        deaths = self.headers.get("x-death") or [{}]
        death = deaths[0] if isinstance(deaths, list) and deaths else {}
        self.death: dict[str, Any] = death if isinstance(death, dict) else {}

    @property
    def ids(self) -> list[str]:
        return [item.id for item in self.items]

    def header_int(self, name: str) -> int:
        try:
            return int(self.headers.get(name) or 0)
        except (TypeError, ValueError):
            return 0


def _is_agent(value: Any) -> bool:
    try:
        check_agent_id(value)
    except ValueError:
        return False
    return True


def _text(value: Any) -> str:
    """Text from a dead letter's headers or body, as valid Unicode whatever it held (a
    lone surrogate is shown escaped: it must not break the listing's JSON)."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def _preview(raw: Any) -> str:
    if isinstance(raw, bytes | bytearray):
        text = bytes(raw[: RAW_PREVIEW * 4]).decode("utf-8", "replace")
    elif isinstance(raw, str):
        text = raw
    else:
        try:
            text = json.dumps(raw)
        except (TypeError, ValueError, RecursionError):
            text = repr(type(raw))
    return _text(text[:RAW_PREVIEW])


class DeadLetterQueue:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @contextmanager
    def holding(self) -> Iterator[Callable[[], _Entry | None]]:
        """Takes the dead letters out to look at them (one reader at a time across
        processes): yields a getter of unacked entries; every one not settled goes back
        to the queue, in its order, on exit."""
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
                    # Raw bodies: decoding is _Entry's, never kombu's (no accept list, no
                    # object hook).
                    message = queue.get(no_ack=False, accept=None)
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
            self.runtime.keys.dead_letters_lock, timeout=120, blocking_timeout=READERS_WAIT
        )
        try:
            held = bool(lock.acquire())
        except redis.RedisError as exc:
            logger.warning("dead letters read without the readers' lock: %s", exc)
            held = False
        else:
            if not held:  # read beside the other, it would see none of what that one holds
                raise BusUnavailable(
                    "the dead letters are held by another reader (a listing, a replay or "
                    f"beat's replay job) for over {READERS_WAIT:g}s; try again shortly",
                    component="dead_letters",
                )
        try:
            yield
        finally:
            if held:
                try:
                    lock.release()
                except redis.RedisError:  # expired or Redis gone: nothing left to undo
                    pass

    def depth(self) -> int:
        broker = self.runtime.broker
        broker.ensure_topology()
        with broker_errors("count the dead letters"), broker.connection() as conn:
            channel = conn.channel()
            try:
                _, count, _ = channel.queue_declare(DEAD_LETTER_QUEUE, passive=True)
                return int(count)
            finally:
                channel.close()

    def _describe(
        self, entry: _Entry, item: Envelope | _Unreadable, statuses: dict[str, dict[str, str]]
    ) -> DeadLetter:
        death = entry.death
        dead_at = death.get("time") if isinstance(death.get("time"), datetime) else None
        replays = entry.header_int(REPLAYS_HEADER)
        if isinstance(item, _Unreadable):
            return DeadLetter(
                id=item.id,
                replays=replays,
                dead_at=dead_at,
                queue=_text(death.get("queue") or "?"),
                reason="malformed",
                error=item.problem,
                attempts=entry.header_int("retries") + 1,
                message={"raw": item.preview} if item.preview else None,
            )
        status = statuses.get(item.id, {})
        reason = status.get("reason") or ""
        if status.get("status") not in ("dead", "expired") or not reason:
            reason = self._derive_reason(entry, item)
        try:
            recorded = int(status.get("attempts") or 0)
        except ValueError:
            recorded = 0
        if entry.agent is not None:
            # A fan-out's status is shared: another recipient's read, death or replays are
            # not this agent's. Its own death and replays are kept per agent.
            own = self._own_death(entry.agent, item.id)
            if own is not None:
                reason, replays = own[0] or reason, max(replays, own[1])
        else:
            try:
                replays = max(replays, int(status.get("replays") or 0))
            except ValueError:
                pass
        return DeadLetter(
            id=item.id,
            replays=replays,
            dead_at=dead_at,
            queue=_text(death.get("queue") or item.priority.queue),
            reason=reason,
            error=status.get("error") or entry.last_error,
            attempts=max(recorded, entry.header_int("retries") + 1),
            message=item.data,
        )

    def _own_death(self, agent: str, message_id: str) -> tuple[str | None, int] | None:
        """(why it died in `agent`'s hands, as its burial recorded; the replays readied for
        it), or None without Redis."""
        runs = self.runtime.handler_runs
        try:
            return runs.death(agent, message_id), runs.replays_readied(agent, message_id)
        except BusUnavailable:
            return None

    def _derive_reason(self, entry: _Entry, envelope: Envelope) -> str:
        """Why a message died, from what it carries, when Redis could not record it."""
        death_reason = str(entry.death.get("reason") or "rejected")
        if death_reason == "expired":
            return "expired"
        if not self.runtime.codec.is_valid(envelope.data):
            return "bad_signature"
        if entry.header_int("retries") >= envelope.max_retries:
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
        except redis.RedisError:
            logger.warning("dead letters listed without Redis status (Redis unavailable)")
            return {}

    def peek(self, limit: int = 100) -> list[DeadLetter]:
        """Up to `limit` dead letters, oldest first, without consuming them."""
        out: list[DeadLetter] = []
        unrecorded: list[tuple[DeadLetter, bool]] = []
        left: list[tuple[_Entry, Envelope | _Unreadable]] = []
        with self.holding() as get:
            while len(out) < limit and (entry := get()) is not None:
                statuses = self._statuses([entry])
                for item in entry.items:
                    out.append(self._describe(entry, item, statuses))
                    unrecorded += _unrecorded(out[-1], statuses, entry)
                    left.append((entry, item))
        self._record_deaths(unrecorded)
        self._bury_left_dead(left)
        return out[:limit]

    def _record_deaths(self, letters: list[tuple[DeadLetter, bool]]) -> None:
        """The deaths no worker could record: a message the broker dead-lettered (ttl), or
        one a worker dead-lettered while Redis was down (its retries ran out through the
        outage). Without this its status would stay `queued`, `retrying` or none at all
        (a worker agent's: `delivered`, which a death only replaces when forced)."""
        by_outcome: dict[tuple[str, str, bool], list[str]] = {}
        for letter, force in letters:
            status = "expired" if letter.reason == "expired" else "dead"
            by_outcome.setdefault((status, letter.reason, force), []).append(letter.id)
        try:
            for (status, reason, force), ids in by_outcome.items():
                self.runtime.store.advance_status(ids, status, force=force, reason=reason)
        except BusUnavailable:
            pass

    def _settle_death(self, entry: _Entry, chosen: list[Envelope | _Unreadable]) -> None:
        """Before a worker agent's letter is replayed or purged: the death its worker could
        not record (Redis away) is recorded and the message buried, so that both find it
        dead (a replay readies it, a purge forgets it) and not `retrying` for ever."""
        statuses = self._statuses([entry])
        for item in chosen:
            if isinstance(item, Envelope):
                self._record_deaths(
                    _unrecorded(self._describe(entry, item, statuses), statuses, entry)
                )
        self._bury_left_dead([(entry, item) for item in chosen])

    def _bury_left_dead(self, seen: list[tuple[_Entry, Envelope | _Unreadable]]) -> None:
        """A worker agent's message that died while Redis was away for its worker is still
        in the agent's inbox, holding a place there: once its status says it is dead, it is
        buried as the worker would have (bus.handler_runs), when the inbox holds that very
        message. A replay readies it the same either way. Not on the word of a letter older
        than that agent's latest replay of it (a fan-out's status is shared: another
        recipient's death says nothing of this one's run)."""
        for entry, item in seen:
            if entry.agent is None or not isinstance(item, Envelope):
                continue
            try:
                if self._is_dead_for(entry, item):
                    reason = self._describe(entry, item, self._statuses([entry])).reason
                    self.runtime.handler_runs.bury(entry.agent, item.id, item.text, reason)
            except BusUnavailable:
                return

    def _is_dead_for(self, entry: _Entry, item: Envelope) -> bool:
        """Whether this letter speaks for its message's death in `entry.agent`'s hands."""
        assert entry.agent is not None
        runs = self.runtime.handler_runs
        if runs.replays_readied(entry.agent, item.id) > entry.header_int(REPLAYS_HEADER):
            return False  # a copy from before its latest replay
        status = self.runtime.store.status(item.id)
        if status.get("status") in (None, "dead", "expired"):
            return True
        # A fan-out's status is shared: one written by another agent's run (its replay,
        # its retries) says nothing of this agent's, whose death the letter tells.
        return status.get(RUN_OF) not in (None, entry.agent)

    def show(self, message_id: str) -> DeadLetter:
        with self.holding() as get:
            for _ in range(self.depth() + 1):
                entry = get()
                if entry is None:
                    break
                for item in entry.items:
                    if item.id == message_id:
                        return self._describe(entry, item, self._statuses([entry]))
        raise NotFound(f"no dead letter with id {message_id!r}", id=message_id)

    def _settle(
        self,
        ids: list[str] | None,
        action: Callable[[_Entry, Envelope], None] | None,
        select: Callable[[DeadLetter], bool] | None = None,
        limit: int | None = None,
    ) -> list[str]:
        """Applies `action` to the chosen messages (all when ids is None) and removes their
        broker messages; a batch entry's unchosen messages go back to the dead letters.
        Unreadable parts can be purged (no action), never replayed."""
        wanted = None if ids is None else set(ids)
        done: list[str] = []
        refused: dict[str, BusError] = {}
        with self.holding() as get:
            for _ in range(self.depth()):
                if limit is not None and len(done) >= limit:
                    break
                entry = get()
                if entry is None:
                    break
                statuses = self._statuses([entry]) if select else {}
                chosen: list[Envelope | _Unreadable] = []
                kept: list[Envelope | _Unreadable] = []
                for item in entry.items:
                    ok = wanted is None or item.id in wanted
                    if ok and action is not None and isinstance(item, _Unreadable):
                        ok = False
                    if ok and select is not None:
                        letter = self._describe(entry, item, statuses)
                        ok = select(letter)
                        if not ok:
                            self._record_deaths(_unrecorded(letter, statuses, entry))
                            self._bury_left_dead([(entry, item)])
                    (chosen if ok else kept).append(item)
                if not chosen:
                    continue  # stays, returned when the channel closes
                if kept and any(isinstance(item, _Unreadable) for item in kept):
                    continue  # its unreadable part cannot be split off: leave it whole
                if entry.agent is not None:
                    self._settle_death(entry, chosen)
                settled = 0
                for item in chosen:
                    try:
                        if action is not None and isinstance(item, Envelope):
                            action(entry, item)
                        elif action is None and entry.agent and isinstance(item, Envelope):
                            self._forget(entry, item)
                    except (InboxFull, NothingToReplay) as exc:
                        refused[item.id] = exc  # stays a dead letter
                        kept.append(item)
                        continue
                    except BusError as exc:  # cut short: say what was done before
                        exc.fields.setdefault("replayed" if action else "purged", list(done))
                        raise
                    done.append(item.id)
                    settled += 1
                if not settled:
                    continue  # stays as it was, returned when the channel closes
                if kept:
                    self._redeadletter(entry, [k for k in kept if isinstance(k, Envelope)])
                entry.amqp.ack()
        if refused:  # named or not (--all), say why, and what was done
            logger.warning(
                "dead letters not replayed: %s", {k: v.message for k, v in refused.items()}
            )
            raise _refusal(refused, done)
        return done

    def _redeadletter(self, entry: _Entry, envelopes: list[Envelope]) -> None:
        with broker_errors("return dead letters"), self.runtime.broker.connection() as conn:
            producer = conn.Producer()
            producer.publish(
                [[[e.text for e in envelopes]], {}, {}],
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

    def _forget(self, entry: _Entry, envelope: Envelope) -> None:
        """A purged worker agent's message is gone for good: out of its inbox if it is
        still there dead (it died while Redis was away), and its burial marker gone. Only
        that very message, and never one that lives: a forged letter naming another's id,
        or a leftover copy of one replayed since, takes nothing."""
        assert entry.agent is not None
        runs = self.runtime.handler_runs
        if runs.replays_readied(entry.agent, envelope.id) > entry.header_int(REPLAYS_HEADER):
            return  # a copy from before its latest replay: the message's later death is not its
        if self._is_dead_for(entry, envelope):
            self.runtime.store.drop_if_same(entry.agent, envelope.id, envelope.text)
        runs.forget_buried(entry.agent, envelope.id, envelope.text)

    def _replay_one(self, entry: _Entry, envelope: Envelope) -> None:
        """Marks it `queued` again, then publishes it: in that order, since a worker may
        deliver it (and its reader ack it) before a later write could land; if the broker
        refuses it, its dead status is put back. A worker agent's message is readied in its
        inbox first, its status with it (bus.handler_runs): refused there, nothing is
        written and nothing published, and the dead letter stays."""
        replays = entry.header_int(REPLAYS_HEADER) + 1
        self._check_replayable(envelope)
        if entry.agent is None:
            before = self._record_replay(envelope.id, replays)
            if before.get("status") in _DELIVERED_ALREADY:
                self._publish_replay(entry, envelope, replays)  # its status was left alone
                return
        else:
            before = self.runtime.store.status(envelope.id)
            try:
                self.runtime.handler_runs.reopen_for_replay(entry.agent, envelope, replays)
                self._publish_replay(entry, envelope, replays)
            except (InboxFull, NothingToReplay):
                raise  # refused: nothing was written
            except BusError:
                # Readied (or maybe: the write may have landed) and not published: dead
                # again, so that the next replay readies it from the inbox.
                self._restore(envelope.id, {"reason": "handler_failed", **before, "status": "dead"})
                self.runtime.handler_runs.unready(entry.agent, envelope.id, replays)
                raise
            return
        try:
            self._publish_replay(entry, envelope, replays)
        except BusError:
            self._restore(envelope.id, before)
            raise

    def _check_replayable(self, envelope: Envelope) -> None:
        """A message a worker could only dead-letter again at once is never put back: one
        the bus did not sign (a forged or altered copy), or one past its ttl (the ttl is
        part of the signed message). A `replay --all` would go round with it for ever."""
        try:
            self.runtime.codec.verify(envelope.data)
        except SecurityError as exc:
            raise NothingToReplay.of(envelope.id, exc.message) from None
        expires_ms = envelope.expires_ms
        if expires_ms is not None and expires_ms <= self.runtime.clock.now_ms():
            raise NothingToReplay.of(envelope.id, "its ttl has passed; send it again instead")

    def _publish_replay(self, entry: _Entry, envelope: Envelope, replays: int) -> None:
        if entry.agent is not None:
            self.runtime.broker.publish(
                topology.HANDLE_TASK,
                [entry.agent, envelope.text],
                queue=topology.agent_queue(self.runtime.settings, entry.agent),
                task_id=f"{envelope.id}:{entry.agent}",
                headers={REPLAYS_HEADER: replays},
                summary=f"<message {envelope.id} for {entry.agent} replay {replays}>",
            )
        else:
            queue = str(entry.death.get("queue") or "")
            if queue not in topology.PRIORITY_QUEUES:
                queue = envelope.priority.queue
            self.runtime.broker.publish(
                DELIVER_TASK,
                [envelope.text],
                queue=queue,
                task_id=envelope.id,
                headers={REPLAYS_HEADER: replays},
                summary=f"<message {envelope.id} replay {replays}>",
            )

    def _record_replay(self, message_id: str, replays: int) -> dict[str, str]:
        """Its status becomes `queued` (forced: it was dead); returns what it was. One
        that was delivered meanwhile (another copy of the letter, the outbox) keeps its
        status: the replay's delivery repeats nothing, and `acked` must not go back."""
        try:
            before: dict[str, str] = self.runtime.store.status(message_id)
            if before.get("status") in _DELIVERED_ALREADY:
                return before
            self.runtime.store.advance_status(
                [message_id], "queued", force=True, replays=replays, reason="", error=""
            )
            return before
        except BusError:
            logger.warning("replaying %s without recording its status", message_id)
            return {}

    def _restore(self, message_id: str, before: dict[str, str]) -> None:
        if not before.get("status"):
            return
        try:
            self.runtime.store.advance_status(
                [message_id],
                before["status"],
                force=True,
                reason=before.get("reason", ""),
                error=before.get("error", ""),
            )
        except BusError:
            logger.warning("could not put back the status of %s", message_id)

    def purge(self, ids: list[str] | None, limit: int | None = None) -> list[str]:
        return self._settle(ids, None, limit=limit)


def _unrecorded(
    letter: DeadLetter, statuses: dict[str, dict[str, str]], entry: _Entry
) -> list[tuple[DeadLetter, bool]]:
    """[(letter, force)] when Redis answered and its status does not say it died (none, or
    one from before its death); [] otherwise. A letter from before the message's latest
    replay (a leftover copy) says nothing of the replayed message, which may be on its way."""
    if letter.id not in statuses or letter.reason == "malformed":
        return []
    status = statuses[letter.id]
    if _replays(status) > entry.header_int(REPLAYS_HEADER):
        return []
    current = status.get("status")
    if current in (None, *_BEFORE_DEATH):
        return [(letter, False)]
    # A worker agent's message is `delivered` into its inbox before its handler runs.
    return [(letter, True)] if entry.agent and current == "delivered" else []


def _replays(status: dict[str, str]) -> int:
    try:
        return int(status.get("replays") or 0)
    except ValueError:
        return 0


def _refusal(refused: dict[str, BusError], done: list[str]) -> BusError:
    """One error for the named dead letters a replay refused, saying which it did replay."""
    errors = list(refused.values())
    fields = {"replayed": done, "refused": sorted(refused)}
    text = "; ".join(e.message for e in errors)
    if done:
        text += f" (replayed: {', '.join(done)})"
    if all(isinstance(e, InboxFull) for e in errors):
        return InboxFull(text, **fields)
    return NothingToReplay(text, **fields)
