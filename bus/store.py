"""The Redis store: inboxes with leases, history, status, subscriptions, agents.

Stored messages are wire JSON strings (signed; payload still encrypted/compressed when the
sender asked), so what sits in Redis is exactly what the broker carried.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from bus import delivery_calls, scripts
from bus.clock import Clock
from bus.delivery_calls import Delivery
from bus.envelope import same_message
from bus.errors import LimitExceeded
from bus.keys import Keys
from bus.redis_conn import redis_errors
from bus.scripts import ScriptRunner
from bus.scripts.runner import Call

logger = logging.getLogger(__name__)

# What one Redis call may return of message bodies, about: Redis builds a reply alone, and
# every other client waits (a read of 500 messages of 1 MiB would hold it for seconds). A
# read leases fewer messages than asked for once it has this much (always one).
MAX_REPLY_BYTES = 16 * 1024 * 1024
REPLY_GROUP = 16  # bodies fetched per call where a listing walks many


AUDIT_MAXLEN = 100_000


@dataclass(frozen=True, slots=True)
class Retention:
    """How much and how long Redis keeps: per-agent history (entries and bytes), status and
    dedup TTLs, inbox depth, and mail for agents that never connected."""

    history_limit: int
    status_retention: int
    dedup_window: int
    history_max_bytes: int = 16 * 1024 * 1024
    inbox_max: int = 10_000
    max_unseen_recipients: int = 100
    sender_share: float = 0.5  # of another agent's inbox and received history, at most
    # How long a dedup record stays a lease before a retry may take it over (scripts.ADMIT)
    send_lease_ms: int = 30_000

    @property
    def inbox_share(self) -> int:
        return max(1, int(self.inbox_max * self.sender_share))

    @property
    def history_share(self) -> int:
        return max(1, int(self.history_limit * self.sender_share))


@dataclass(frozen=True, slots=True)
class Leased:
    id: str
    wire: str
    delivery_count: int
    lease_expires_ms: int


class RedisBacked:
    """What the store and admission both act through: one Redis client, the keyspace, what
    Redis keeps and for how long, Redis's clock, and the Lua runner."""

    def __init__(
        self,
        client: Any,
        keys: Keys,
        retention: Retention,
        clock: Clock,
        scripts: ScriptRunner | None = None,
    ) -> None:
        # redis.Redis with decode_responses=True: results are str, which its type stubs
        # cannot express (they say bytes | str), hence Any.
        self.redis: Any = client
        self.keys = keys
        self.retention = retention
        self.clock = clock
        # Writes are confirmed by replicas (WAIT) when the runner's replication asks.
        self.scripts = scripts or ScriptRunner(client)


class RedisStore(RedisBacked):
    # -- delivery (worker side) ----------------------------------------------------------

    def deliver(self, delivery: Delivery) -> Any:
        """Appends to each recipient's inbox and history, sets `delivered`: one script."""
        keys, args = self._delivery(delivery)
        return self.scripts.call(
            scripts.DELIVER, keys, args, action="deliver a message", confirm="require"
        )

    def deliver_pipelined(self, deliveries: Sequence[Delivery]) -> list[Any]:
        """Many deliveries in one round trip, each atomic on its own; returns how many
        recipients each was newly delivered to. A batch of direct messages takes one script
        per inbox; one with any other (fan-out, answers) one script per message, in order."""
        groups = delivery_calls.by_inbox(deliveries)
        now = self.clock.now()
        if groups is None:
            calls = [(scripts.DELIVER, *self._delivery(delivery)) for delivery in deliveries]
            return self.scripts.many(calls, action="deliver a batch", confirm="require")
        inbox_calls = [
            (
                scripts.DELIVER_INBOX,
                *delivery_calls.inbox_delivery(self.keys, self.retention, now, a, g),
            )
            for a, g in groups
        ]
        replies = self.scripts.many(inbox_calls, action="deliver a batch", confirm="require")
        newly = {
            d.message_id: int(flag)
            for (_, group), flags in zip(groups, replies, strict=True)
            for d, flag in zip(group, flags, strict=True)
        }
        return [newly[d.message_id] for d in deliveries]

    def delivery_call(self, delivery: Delivery, admitted_by: str) -> Call:
        """DELIVER of `delivery` as a call to run right behind its ADMIT (one round trip):
        it delivers only if the status is that admission's (`admitted_by`, its token) and
        otherwise answers -1, writing nothing."""
        return (scripts.DELIVER, *self._delivery(delivery, admitted_by))

    def _delivery(self, d: Delivery, admitted_by: str = "") -> tuple[list[str], list[Any]]:
        return delivery_calls.delivery(self.keys, self.retention, self.clock.now(), d, admitted_by)

    def fanout_index(
        self, topics: Sequence[str], broadcast: bool
    ) -> tuple[list[dict[str, str]], list[str]]:
        """The subscribers of `topics` and (when `broadcast`) every registered agent, in one
        round trip."""
        with redis_errors("look up recipients"):
            pipe = self.redis.pipeline(transaction=False)
            for topic in topics:
                pipe.hgetall(self.keys.topic(topic))
            if broadcast:
                pipe.zrange(self.keys.agents, 0, -1)
            replies = pipe.execute()
        return replies[: len(topics)], (replies[-1] if broadcast else [])

    def topic_subscribers(self, topics: Sequence[str]) -> list[dict[str, str]]:
        with redis_errors("look up topic subscribers"):
            pipe = self.redis.pipeline(transaction=False)
            for topic in topics:
                pipe.hgetall(self.keys.topic(topic))
            return pipe.execute()

    def worker_agents(self) -> list[str]:
        with redis_errors("list worker agents"):
            return list(self.redis.smembers(self.keys.worker_agents))

    def register_worker_agent(self, agent: str) -> None:
        with redis_errors("register a worker agent"):
            pipe = self.redis.pipeline(transaction=True)
            pipe.sadd(self.keys.worker_agents, agent)
            pipe.zadd(self.keys.agents, {agent: self.clock.now_ms()}, nx=True)
            pipe.execute()

    def agent_ids(self) -> list[str]:
        with redis_errors("list agents"):
            return self.redis.zrange(self.keys.agents, 0, -1)

    def ghost_ids(self) -> list[str]:
        """Agents that never connected and have had mail (scripts.ghosts)."""
        with redis_errors("list agents never seen"):
            return self.redis.zrange(self.keys.ghosts, 0, -1)

    def drop_ghost(self, ghost: str, cutoff_ms: int) -> list[str] | None:
        """Drops the mail of `ghost` when none came for it since `cutoff_ms` (and it never
        connected); the ids its inbox held, or None when it is kept."""
        inbox = self.keys.inbox(ghost)
        history = self.keys.history(ghost)
        with redis_errors("read who wrote to an agent never seen"):
            # (its "p:<sender>" fields count mail on the way: scripts.fragments.PENDING_LUA)
            senders = {s for s in self.redis.hkeys(inbox.senders) if not s.startswith("p:")}
            senders |= set(self.redis.hkeys(self.keys.history_senders(ghost)))
        keys = [self.keys.ghosts, self.keys.agents, *inbox.all(), inbox.pending, inbox.senders]
        keys += [history, self.keys.history_bytes(ghost), self.keys.history_senders(ghost)]
        keys += [self.keys.unseen(sender) for sender in sorted(senders)]
        out = self.scripts.call(
            scripts.DROP_GHOST, keys, [ghost, cutoff_ms], action="drop stale mail"
        )
        return list(out[1:]) if out[0] == "dropped" else None

    # -- inbox -----------------------------------------------------------------------------

    def lease(self, agent: str, limit: int, lease_seconds: float) -> list[Leased]:
        """Leases up to `limit` messages; reading also registers the agent and notes when
        it was last seen (one script, one round trip)."""
        lease_ms = int(lease_seconds * 1000)
        k = self.keys
        keys = [*k.inbox(agent).all(), k.agents, k.agent_seen(agent)]
        args = [lease_ms, limit, agent, MAX_REPLY_BYTES]
        deadline, *flat = self.scripts.call(scripts.READ, keys, args, action="read the inbox")
        return [
            Leased(flat[i], flat[i + 1], int(flat[i + 2]), int(deadline))
            for i in range(0, len(flat), 3)
        ]

    def ack(self, agent: str, ids: Sequence[str]) -> list[str]:
        """`agent`'s acks: out of its inbox, each counted on its message's status (in one
        script); returns the ids that were there."""
        if not ids:
            return []
        inbox = self.keys.inbox(agent)
        keys = [*inbox.all(), inbox.senders]
        for message_id in ids:
            keys += self._ack_keys(message_id)
        args = [agent, self.retention.status_retention, *ids]
        acked: list[str] = self.scripts.call(
            scripts.ACK_READ, keys, args, action="ack messages", confirm="note"
        )
        return acked

    def remove(self, agent: str, ids: Sequence[str]) -> list[str]:
        """Messages out of `agent`'s inbox, no ack counted (expired, purged); returns the
        ids that were there."""
        if not ids:
            return []
        inbox = self.keys.inbox(agent)
        keys = [*inbox.all(), inbox.senders]
        removed: list[str] = self.scripts.call(
            scripts.ACK, keys, ids, action="remove messages", confirm="note"
        )
        return removed

    def _ack_keys(self, message_id: str) -> list[str]:
        k = self.keys
        return [k.status(message_id), k.delivered(message_id), k.acked(message_id)]

    def taken_answer(self, agent: str, correlation_id: str) -> str | None:
        """The answer to `agent`'s request `correlation_id` when it came and is no longer in
        the inbox (taken), in one atomic look; None otherwise."""
        with redis_errors("look up a response"):
            answered = self.redis.get(self.keys.reply(agent, correlation_id))
            if answered is None:
                return None
            pipe = self.redis.pipeline(transaction=True)
            pipe.get(self.keys.reply(agent, correlation_id))
            pipe.hexists(self.keys.inbox(agent).body, answered)
            pointer, present = pipe.execute()
        return pointer if pointer == answered and not present else None

    def take(self, agent: str, message_id: str, sender: str | None = None) -> str | None:
        """One message's wire out of an inbox, acked and its ack counted on its status, in
        one script (a requester collecting its response). None when it is not there, or (given
        `sender`) is from someone else: then nothing is written."""
        inbox = self.keys.inbox(agent)
        keys = [*inbox.all(), inbox.senders, *self._ack_keys(message_id)]
        args = [message_id, self.retention.status_retention, sender or "", agent]
        wire: str | None = self.scripts.call(scripts.TAKE, keys, args, action="take a message")
        return wire or None

    def ack_handled(self, agent: str, message_id: str) -> bool:
        """A worker agent done with its message: out of its inbox and its ack counted, in
        one script (TAKE); a second run's ack of the same message counts nothing. Whether
        the inbox still held it."""
        inbox = self.keys.inbox(agent)
        keys = [*inbox.all(), inbox.senders, *self._ack_keys(message_id)]
        args = [message_id, self.retention.status_retention, "", agent]
        taken = self.scripts.call(scripts.TAKE, keys, args, action="ack messages", confirm="note")
        return bool(taken)

    def inbox_depth(self, agent: str) -> tuple[int, int]:
        """(ready, leased) counts."""
        inbox = self.keys.inbox(agent)
        with redis_errors("count the inbox"):
            pipe = self.redis.pipeline(transaction=False)
            pipe.zcard(inbox.ready)
            pipe.zcard(inbox.leased)
            ready, leased = pipe.execute()
        return int(ready), int(leased)

    def unread(self, agent: str) -> int:
        """Messages a read would hand out: the ready ones, and leased ones whose lease has
        run out (by Redis's clock)."""
        inbox = self.keys.inbox(agent)
        with redis_errors("count unread messages"):
            pipe = self.redis.pipeline(transaction=False)
            pipe.zcard(inbox.ready)
            pipe.zcount(inbox.leased, "-inf", self.clock.now_ms())
            ready, expired = pipe.execute()
        return int(ready) + int(expired)

    def inbox_depths(self, agents: Sequence[str]) -> dict[str, int]:
        with redis_errors("count inboxes"):
            pipe = self.redis.pipeline(transaction=False)
            for agent in agents:
                pipe.hlen(self.keys.inbox(agent).body)
            return dict(zip(agents, (int(n) for n in pipe.execute()), strict=True))

    def peek_inbox(self, agent: str, limit: int) -> list[str]:
        """Wire JSON of up to `limit` inbox messages in read order, without leasing."""
        inbox = self.keys.inbox(agent)
        with redis_errors("look at the inbox"):
            ids = self.redis.zrange(inbox.ready, 0, limit - 1)
            wires: list[str] = []
            used = 0
            for start in range(0, len(ids), REPLY_GROUP):  # a bounded reply at a time
                if used >= MAX_REPLY_BYTES:
                    break
                found = [
                    w for w in self.redis.hmget(inbox.body, ids[start : start + REPLY_GROUP]) if w
                ]
                wires += found
                used += sum(len(w) for w in found)
            return wires

    def drop_if_same(self, agent: str, message_id: str, wire: str) -> bool:
        """Takes `message_id` out of `agent`'s inbox only if what is stored under it is
        `wire` (the same message at any try, see `same_message`): a forged copy naming the id of
        another's message removes nothing."""
        with redis_errors("look at the inbox"):
            stored = self.redis.hget(self.keys.inbox(agent).body, message_id)
        return (
            stored is not None
            and same_message(stored, wire)
            and bool(self.remove(agent, [message_id]))
        )

    def peek_inbox_items(self, agent: str, limit: int) -> list[tuple[str, str]]:
        """(id, wire) of up to `limit` inbox messages, leased or not."""
        with redis_errors("scan the inbox"):
            items = []
            body = self.keys.inbox(agent).body
            for message_id, wire in self.redis.hscan_iter(body, count=REPLY_GROUP):
                items.append((message_id, wire))
                if len(items) >= limit:
                    break
            return items

    # -- history ---------------------------------------------------------------------------

    def history(self, agent: str, limit: int, since_ms: int | None) -> list[str]:
        """What `agent` sent and received, newest first (one round trip)."""
        low = since_ms if since_ms is not None else "-inf"
        with redis_errors("read history"):
            pipe = self.redis.pipeline(transaction=False)
            for key, _ in self.keys.histories(agent):
                pipe.zrevrangebyscore(key, "+inf", low, start=0, num=limit, withscores=True)
            received, sent = pipe.execute()
        merged = sorted({**dict(sent), **dict(received)}.items(), key=lambda e: -e[1])
        return [wire for wire, _ in merged[:limit]]

    def trim_history_before(self, agent: str, cutoff_ms: int) -> int:
        """Drops `agent`'s history older than `cutoff_ms`, keeping its byte counts true."""
        received, sent = self.keys.histories(agent)
        both = ([*received, self.keys.history_senders(agent)], list(sent))
        trimmed = self.scripts.many(
            [(scripts.TRIM_HISTORY_BEFORE, keys, [cutoff_ms]) for keys in both],
            action="trim history",
        )
        return sum(int(n) for n in trimmed)

    # -- status ----------------------------------------------------------------------------

    def advance_status(
        self, ids: Sequence[str], status: str, *, force: bool = False, **fields: Any
    ) -> int:
        if not ids:
            return 0
        args: list[Any] = [status, self.retention.status_retention, "1" if force else "0"]
        for name, value in fields.items():
            args += [name, "" if value is None else value]
        keys = [self.keys.status(i) for i in ids]
        return int(
            self.scripts.call(scripts.ADVANCE_STATUS, keys, args, action="update message status")
        )

    def status(self, message_id: str, viewer: str | None = None) -> dict[str, str]:
        """The status hash; with `viewer`, empty unless it sent or received the message."""
        with redis_errors("read message status"):
            if viewer is None:
                return self.redis.hgetall(self.keys.status(message_id))
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(self.keys.status(message_id))
            pipe.sismember(self.keys.delivered(message_id), viewer)
            raw, received = pipe.execute()
        return raw if raw.get("from") == viewer or received else {}

    def reply_for(self, agent: str, correlation_id: str) -> str | None:
        """The id of the latest answer to `agent`'s request `correlation_id` from the agent
        it asked (scripts.DELIVER)."""
        with redis_errors("look up a response"):
            return self.redis.get(self.keys.reply(agent, correlation_id))

    # -- subscriptions and agents ----------------------------------------------------------

    def subscribe(
        self, agent: str, topics: Sequence[str], filters: dict[str, Any], max_topics: int
    ) -> int:
        k = self.keys
        keys = [k.subscriptions(agent), k.topics, k.agents, k.agent_seen(agent)]
        keys += [k.topic(t) for t in topics]
        args = [agent, max_topics, orjson.dumps(filters), "", *topics]
        total = int(self.scripts.call(scripts.SUBSCRIBE, keys, args, action="subscribe"))
        if total < 0:
            current = -total - 1
            raise LimitExceeded(
                f"agent {agent!r} has {current} topic subscriptions; adding {len(topics)} "
                f"would pass the limit of {max_topics} "
                "(MESSAGE_BUS_MAX_TOPICS_PER_SUBSCRIPTION); nothing was subscribed",
                limit="max_topics_per_subscription",
            )
        return total

    def unsubscribe(self, agent: str, topics: Sequence[str]) -> int:
        k = self.keys
        keys = [k.subscriptions(agent), k.topics] + [k.topic(t) for t in topics]
        args = [agent, *topics]
        return int(self.scripts.call(scripts.UNSUBSCRIBE, keys, args, action="unsubscribe"))

    def subscriptions(self, agent: str) -> dict[str, dict[str, Any]]:
        with redis_errors("list subscriptions"):
            raw = self.redis.hgetall(self.keys.subscriptions(agent))
        return {topic: orjson.loads(filters) for topic, filters in raw.items()}

    def topics(self) -> dict[str, int]:
        with redis_errors("list topics"):
            names = sorted(self.redis.smembers(self.keys.topics))
            pipe = self.redis.pipeline(transaction=False)
            for name in names:
                pipe.hlen(self.keys.topic(name))
            return dict(zip(names, (int(n) for n in pipe.execute()), strict=True))

    def declare_agent(self, agent: str) -> bool:
        with redis_errors("declare an agent"):
            return bool(self.redis.zadd(self.keys.agents, {agent: self.clock.now_ms()}, nx=True))

    def audit_entries(
        self, count: int, after: str | None, block_ms: int
    ) -> list[tuple[str, dict[str, str]]]:
        key = self.keys.audit
        with redis_errors("read the audit log"):
            if after is None:
                return list(reversed(self.redis.xrevrange(key, count=count)))
            batch = self.redis.xread({key: after}, count=count, block=block_ms or None) or []
        return [entry for _, stream in batch for entry in stream]

    def agents(self) -> list[tuple[str, int, int | None]]:
        """(agent, registered ms, last seen ms)."""
        with redis_errors("list agents"):
            entries = self.redis.zrange(self.keys.agents, 0, -1, withscores=True)
            if not entries:
                return []
            seen = self.redis.mget([self.keys.agent_seen(a) for a, _ in entries])
        return [
            (agent, int(score), int(last) if last else None)
            for (agent, score), last in zip(entries, seen, strict=True)
        ]

    def rates(self, seconds: int = 10) -> dict[str, float]:
        """Messages per second sent and delivered over the last `seconds` full seconds."""
        now = self.clock.now_ms() // 1000
        span = range(now - seconds, now)
        with redis_errors("read rates"):
            values = self.redis.mget(
                [self.keys.rate_bucket(kind, sec) for kind in ("sent", "delivered") for sec in span]
            )
        sent = sum(int(v or 0) for v in values[:seconds])
        delivered = sum(int(v or 0) for v in values[seconds:])
        return {"sent_per_s": sent / seconds, "delivered_per_s": delivered / seconds}

    def ping(self) -> bool:
        with redis_errors("ping Redis"):
            return bool(self.redis.ping())
