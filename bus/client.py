"""``MessageBus``: the synchronous Python API over the store and the broker.

Send path: validate -> authorize -> rate limit -> dedup -> encode + sign -> status
"queued" -> Celery task on ``bus.<priority>`` with publisher confirms.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from bus.deadletters import MAX_LISTED, DeadLetterQueue
from bus.errors import BusError, LimitExceeded, NotFound, RequestTimeout, ValidationError
from bus.guard import Guard
from bus.handle import OPERATOR, AgentHandle
from bus.health import Health, Stats, check_health, collect_stats
from bus.hooks import Hooks
from bus.reader import Reader
from bus.runtime import Runtime
from bus.schema import (
    AckResult,
    AgentInfo,
    DeadLetter,
    DeadLetterChoice,
    Message,
    MessageStatus,
    MessageType,
    Priority,
    Receipt,
    ReceivedMessage,
    Subscription,
    check_agent_id,
    check_topic,
    could_be_message_id,
)
from bus.sender import Sender
from bus.settings import Settings
from bus.validation import check, finite, parse, whole_number, within

logger = logging.getLogger(__name__)


# The last second a datetime holds (9999-12-31): a `since` past it is no time.
MAX_UNIX_SECONDS = 253402300799
# A request waits at most a day for its answer: a wait has a bound, as every state does.
MAX_REQUEST_TIMEOUT = 86400.0


class MessageBus:
    """Settings come from the environment unless given; nothing connects until first use."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        runtime: Runtime | None = None,
        deliver_here: bool = False,
    ):
        """`deliver_here`: direct messages are delivered by this process, for code running
        inside a retried task (a worker agent; see Sender)."""
        self.runtime = runtime or Runtime(settings or Settings())
        self.settings = self.runtime.settings
        self.guard = Guard(self.runtime)
        self.hooks = Hooks(self.guard)
        self.reader = Reader(self.runtime, self.hooks)
        self.sender = Sender(self.runtime, self.guard, self.hooks, deliver_here=deliver_here)

    # -- sending ---------------------------------------------------------------------------

    def as_agent(self, agent: str, *, front_door: bool = False) -> AgentHandle:
        """A handle that acts as `agent`, every action checked (bus.handle). Entrances make
        one for the identity they authenticated; `front_door` for LLM agents (MCP)."""
        return AgentHandle(self, agent, front_door=front_door)

    def as_operator(self) -> AgentHandle:
        """A handle for the operator at the console (trusted CLI): admin actions, audited
        as "operator"."""
        return AgentHandle(self, OPERATOR, operator=True)

    def send_message(self, message: Message | dict[str, Any], **fields: Any) -> Receipt:
        """Sends one message (direct, topic or broadcast, as its address says)."""
        if isinstance(message, dict):
            message = {**message, **fields}
        return self._send([message])[0]

    def _send(
        self,
        messages: Sequence[Message | dict[str, Any]],
        *,
        batch: bool = False,
        front_door: bool = False,
    ) -> list[Receipt]:
        if batch:
            if len(messages) > self.settings.max_batch:
                raise LimitExceeded(
                    f"batch has {len(messages)} messages; the limit is "
                    f"{self.settings.max_batch} (MESSAGE_BUS_MAX_BATCH)",
                    limit="max_batch",
                )
            if not messages:
                raise ValidationError("batch is empty: give at least one message")
        where = "messages[{}]." if batch else ""
        prepared = [self.sender.prepare(m, where=where.format(i)) for i, m in enumerate(messages)]
        return self.sender.send(prepared, batch=batch, front_door=front_door)

    def publish(
        self, sender: str, topic: str, payload: Any = None, *, type: str = "event", **fields: Any
    ) -> Receipt:
        return self.send_message(
            {"from": sender, "topic": topic, "type": type, "payload": payload, **fields}
        )

    def broadcast(self, sender: str, payload: Any = None, **fields: Any) -> Receipt:
        return self.send_message(
            {"from": sender, "to": "*", "type": "broadcast", "payload": payload, **fields}
        )

    def send_batch(self, messages: Sequence[Message | dict[str, Any]]) -> list[Receipt]:
        """Validates all first (nothing is sent if any is invalid), then one task per
        priority carries the whole group."""
        return self._send(messages, batch=True)

    def request(self, message: Message | dict[str, Any], timeout: float = 30.0) -> ReceivedMessage:
        """Sends a request and waits for the response that carries its id as correlation_id.

        The response is taken out of the requester's inbox (read and acked) and returned.
        Raises RequestTimeout (with the request id) when none comes in time."""
        data = message.model_dump(by_alias=True) if isinstance(message, Message) else dict(message)
        data.setdefault("type", "request")
        data.setdefault("reply_to", data.get("from") or data.get("sender"))
        return self._request(data, timeout)

    def _request(
        self, data: dict[str, Any], timeout: float, *, front_door: bool = False
    ) -> ReceivedMessage:
        timeout = finite(timeout, "timeout", positive=True, bound=MAX_REQUEST_TIMEOUT)
        prepared = self.sender.prepare(data)
        message = prepared.message
        requester = message.reply_to or message.sender
        # Only the agent asked answers a direct request: mail from anyone else that names
        # its id (they would have to learn it) stays in the inbox as ordinary mail.
        asked = message.to if message.to and not message.is_broadcast else None
        deadline = time.monotonic() + timeout
        with self.reader.reply_waiter(message.id, requester) as waiter:
            [receipt] = self.sender.send([prepared], front_door=front_door)
            # A retry with a dedup key is the earlier request (its duplicate, or sent again
            # under its id): its answer is the one to wait for.
            request_id = receipt.duplicate_of or receipt.id
            if request_id == message.id:
                answer = self._answer(waiter, requester, asked, deadline)
        if request_id != message.id:
            # The earlier request's answer may be taken already (by its first caller, then or
            # while this one waits): that is said at once, not after the timeout.
            answered = self.runtime.store.taken_answer(requester, request_id)
            if answered is not None:
                raise _answer_taken(request_id, answered)
            # (The pointer names only an answer from the agent that request went to, which
            # this retry's own `to` may not be.)
            with self.reader.reply_waiter(request_id, requester) as waiter:
                answer = self._answer(waiter, requester, None, deadline, earlier=request_id)
        if answer is not None:
            return answer
        raise RequestTimeout(
            f"no response to request {request_id} within {timeout:g}s; "
            "check later with status/read",
            id=request_id,
        )

    def _answer(
        self,
        waiter: Any,
        requester: str,
        asked: str | None,
        deadline: float,
        earlier: str | None = None,
    ) -> ReceivedMessage | None:
        """The answer `waiter` is woken for, taken out of the requester's inbox. For a retry
        of an `earlier` request, an answer someone else took first ends the wait."""
        fresh = earlier is None  # sent after the waiter subscribed
        while (left := deadline - time.monotonic()) > 0:
            response_id = waiter.wait(left, look_first=not fresh)
            fresh = False
            if response_id is None:
                return None
            wire = self.runtime.store.take(requester, response_id, asked)
            if wire is not None:
                return self.reader.decode(wire, entry_id=response_id)
            if earlier is not None:
                raise _answer_taken(earlier, response_id)
            waiter.pass_over(response_id)
        return None

    # -- reading ---------------------------------------------------------------------------

    def read(self, agent: str, limit: int = 10, wait: float = 0.0) -> list[ReceivedMessage]:
        """Leases up to `limit` messages (highest priority first, FIFO within one), fewer
        once their bodies reach 16 MiB (store.MAX_REPLY_BYTES; always one); waits up to
        `wait` seconds for the first to arrive. Unacked leases expire and come back."""
        agent = check(agent, check_agent_id, "agent id")
        limit = whole_number(limit, "limit", 1, self.settings.max_batch, "MESSAGE_BUS_MAX_BATCH")
        wait = within(wait, "wait", 0, self.settings.max_wait_seconds, unit=" seconds")
        return self.reader.read(agent, limit, wait)

    def ack(self, agent: str, ids: Iterable[str]) -> AckResult:
        agent = check(agent, check_agent_id, "agent id")
        ids = list(dict.fromkeys(ids))
        if len(ids) > self.settings.max_batch:
            raise LimitExceeded(
                f"at most {self.settings.max_batch} ids per ack (MESSAGE_BUS_MAX_BATCH), "
                f"got {len(ids)}",
                limit="max_batch",
            )
        # An id that no message can have is in no inbox: not sent to Redis at all.
        acked = self.runtime.store.ack(agent, [i for i in ids if could_be_message_id(i)])
        done = set(acked)
        self.hooks.did("ack", agent, acked)
        return AckResult(acked=acked, not_found=[i for i in ids if i not in done])

    def history(
        self,
        agent: str,
        limit: int = 50,
        since: datetime | float | None = None,
        type: str | None = None,
    ) -> list[ReceivedMessage]:
        agent = check(agent, check_agent_id, "agent id")
        limit = whole_number(
            limit, "limit", 1, self.settings.history_limit, "MESSAGE_BUS_HISTORY_LIMIT"
        )
        if type is not None:
            try:
                MessageType(type)
            except ValueError:
                raise ValidationError(
                    f"unknown type {type!r}; one of {', '.join(t.value for t in MessageType)}"
                ) from None
        return self.reader.history(agent, limit, _since_ms(since), type)

    def status(self, message_id: str, *, viewer: str | None = None) -> MessageStatus:
        """A message's status; with `viewer`, only if it is the message's sender or one of
        its recipients (anyone else is told there is none)."""
        raw = self.runtime.store.status(message_id, viewer=viewer)
        if not raw:
            raise NotFound(
                f"no status for message {message_id!r} (unknown, not yours, or older than "
                f"the {self.settings.status_retention}s retention)",
                id=message_id,
            )
        return MessageStatus.from_record(message_id, raw, self.runtime.clock.now_ms())

    # -- subscriptions and agents ------------------------------------------------------------

    def subscribe(
        self,
        agent: str,
        topics: Sequence[str],
        *,
        types: Sequence[str] | None = None,
        priorities: Sequence[str] | None = None,
        front_door: bool = False,
    ) -> list[Subscription]:
        """`front_door`: an LLM agent's subscription, charged a token per topic (its churn
        is bounded like its sends)."""
        agent = check(agent, check_agent_id, "agent id")
        if isinstance(topics, str):
            topics = [topics]
        if not topics:
            raise ValidationError("give at least one topic to subscribe to")
        limit = self.settings.max_topics_per_subscription
        if len(topics) > limit:
            raise LimitExceeded(
                f"{len(topics)} topics in one subscription; the limit is {limit} "
                "(MESSAGE_BUS_MAX_TOPICS_PER_SUBSCRIPTION)",
                limit="max_topics_per_subscription",
            )
        subs = [
            parse(
                Subscription, {"agent": agent, "topic": t, "types": types, "priorities": priorities}
            )
            for t in dict.fromkeys(topics)
        ]
        for topic in dict.fromkeys(topics):
            self.guard.authorize_subscribe(agent, topic)
        self.guard.charge(agent, len(subs), front_door=front_door)
        filters = {
            "types": [t.value for t in subs[0].types] if subs[0].types else None,
            "priorities": [p.value for p in subs[0].priorities] if subs[0].priorities else None,
        }
        self.runtime.store.subscribe(agent, [s.topic for s in subs], filters, limit)
        self.hooks.did("subscribe", agent, [",".join(s.topic for s in subs)])
        return subs

    def unsubscribe(self, agent: str, topics: Sequence[str], *, front_door: bool = False) -> int:
        agent = check(agent, check_agent_id, "agent id")
        if isinstance(topics, str):
            topics = [topics]
        topics = [check(t, check_topic, "topic") for t in dict.fromkeys(topics)]
        self.guard.charge(agent, len(topics), front_door=front_door)
        removed = self.runtime.store.unsubscribe(agent, topics)
        self.hooks.did("unsubscribe", agent, [",".join(topics)])
        return removed

    def subscriptions(self, agent: str) -> list[Subscription]:
        agent = check(agent, check_agent_id, "agent id")
        return [
            Subscription(agent=agent, topic=topic, **filters)
            for topic, filters in sorted(self.runtime.store.subscriptions(agent).items())
        ]

    def agents(self) -> list[AgentInfo]:
        entries = self.runtime.store.agents()
        depths = self.runtime.store.inbox_depths([a for a, _, _ in entries])
        return [
            AgentInfo(id=a, registered_at=_dt(reg), last_seen=_dt(seen), inbox_depth=depths[a])
            for a, reg, seen in entries
        ]

    def topics(self) -> dict[str, int]:
        return self.runtime.store.topics()

    # -- dead letters ------------------------------------------------------------------------

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Up to `limit` dead letters: 1000, or what the queue may hold if more (a listing
        holds them unacked while it looks)."""
        bound = max(MAX_LISTED, self.settings.dead_letter_max_length)
        limit = whole_number(limit, "limit", 1, bound, "MESSAGE_BUS_DEAD_LETTER_MAX_LENGTH")
        return self.dead_letter_queue.peek(limit)

    def dead_letter(self, message_id: str) -> DeadLetter:
        return self.dead_letter_queue.show(message_id)

    def replay_dead_letters(
        self, ids: Sequence[str] | None = None, *, all: bool = False, agent: str | None = None
    ) -> list[str]:
        """Replays the given dead letters (or all of them) to their priority queues; as
        `agent` when given (admins only), else as the operator."""
        if agent is not None:
            return self.as_agent(agent).replay_dead_letters(ids, all=all)
        return self._settle_dead_letters("replay", ids, all, None, OPERATOR)

    def purge_dead_letters(
        self, ids: Sequence[str] | None = None, *, all: bool = False, agent: str | None = None
    ) -> list[str]:
        if agent is not None:
            return self.as_agent(agent).purge_dead_letters(ids, all=all)
        return self._settle_dead_letters("purge", ids, all, None, OPERATOR)

    def _settle_dead_letters(
        self,
        action: str,
        ids: Sequence[str] | None,
        everything: bool,
        limit: int | None,
        agent: str,
    ) -> list[str]:
        given: Any = ids
        if ids is not None and not isinstance(ids, str | bytes) and isinstance(ids, Iterable):
            given = list(ids)
        choice = parse(DeadLetterChoice, {"ids": given, "all": everything}, what="choice")
        if not choice.ids and not choice.all:
            raise ValidationError(f"name the dead letters to {action}, or ask for all")
        queue = self.dead_letter_queue
        chosen = None if choice.all else choice.ids
        try:
            if action == "replay":
                done = queue.replay(chosen, limit=limit)
            else:
                done = queue.purge(chosen, limit=limit)
        except BusError as exc:  # some refused: what was done is audited all the same
            if exc.fields.get("replayed"):
                self.hooks.did(action, agent, list(exc.fields["replayed"]))
            raise
        self.hooks.did(action, agent, done)
        return done

    # -- operations ------------------------------------------------------------------------

    def health(self, kind: str = "client") -> Health:
        """Redis, broker, live workers, breaker states, dead-letter depth, keys (this
        process listed as `kind`)."""
        return check_health(self.runtime, kind=kind)

    def stats(self) -> Stats:
        """Queue depths, agents, topics, subscriptions and inbox depths."""
        return collect_stats(self.runtime)

    @property
    def dead_letter_queue(self) -> DeadLetterQueue:
        return DeadLetterQueue(self.runtime)

    def close(self) -> None:
        self.reader.close()
        self.runtime.close()

    def __enter__(self) -> MessageBus:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


def _dt(ms: int | None) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms else None


def _since_ms(since: datetime | float | None) -> int | None:
    if since is None:
        return None
    if isinstance(since, datetime):
        return int(since.timestamp() * 1000)
    return int(finite(since, "since", bound=MAX_UNIX_SECONDS) * 1000)


__all__ = ["MessageBus", "RequestTimeout", "Priority"]


def _answer_taken(request_id: str, answer_id: str) -> NotFound:
    return NotFound(
        f"request {request_id}, which this dedup key stands for, was answered already "
        f"({answer_id}) and that answer has been taken",
        id=request_id,
    )
