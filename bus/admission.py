"""Admission: the send side's one Redis call, and its undo.

One ADMIT script per send or batch refuses what may not be stored (an id another sender
owns, mail for an agent that never connected past the sender's allowance, a full inbox),
charges the rate limit for every recipient, refuses duplicates (the same sender's dedup key
or id within the dedup window), records each message as `queued` with its sender's history,
and appends the audit entries: all of it or none of it. It runs before the publish, so a
refusal leaves nothing anywhere.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from bus import delivery_calls, scripts
from bus.errors import BusUnavailable
from bus.redis_conn import redis_errors
from bus.scripts.runner import Call
from bus.store import AUDIT_MAXLEN, RedisBacked

logger = logging.getLogger(__name__)

# The wires one ADMIT carries at most: Redis runs a script alone, every other client waits
# (a 140 MB batch in one call held Redis for 2.3 s, past clients' socket timeouts).
MAX_ADMIT_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class AcceptRecord:
    id: str
    dedup_key: str
    sender: str
    queue: str
    wire: str
    ts_ms: int
    expires_ms: int | None
    # Its own id or dedup key: the client may send it again. Its dedup record stays
    # pending until `commit` (after the broker's confirm).
    may_repeat: bool = False
    to: str = ""  # the direct recipient ('' for topic and broadcast)
    declared: bool = False  # the ACL names `to`: it may get mail before it connects
    recipients: tuple[str, ...] = ()  # every agent it reaches, as the sender resolved them
    # Whose lease a pending dedup record is (scripts.ADMIT): kept when the message is
    # prepared again under an earlier id, so that its second admission takes over.
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    takeover: bool = False  # it goes out under an earlier sender's id (scripts.ADMIT)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket charge from `key`, refilled at `rate`/s up to `burst`."""

    key: str
    rate: float
    burst: int


@dataclass(frozen=True, slots=True)
class InFlight:
    """An earlier send of the same dedup key or id, admitted and not yet confirmed by the
    broker: its id, and how long its lease has left (seconds)."""

    id: str
    left: float


@dataclass(frozen=True, slots=True)
class Admitted:
    """Per message, None when accepted or the id it duplicates; the messages to send again
    under an earlier sender's id (index -> id: that sender died, see scripts.ADMIT); those
    whose earlier send is still in flight (index -> InFlight); or why the whole call was
    refused (nothing written): `refusal` is the script's reason and its details."""

    duplicates: list[str | None]
    retry_as: dict[int, str] = field(default_factory=dict)
    in_flight: dict[int, InFlight] = field(default_factory=dict)
    refusal: tuple[str, ...] | None = None
    followed: Any = None  # the reply to the call that rode behind the admission (`then`)
    # with a refusal: the messages of the batch's earlier parts, admitted and taken back
    taken_back: list[int] = field(default_factory=list)

    @property
    def unsettled(self) -> list[int]:
        """The messages whose outcome another admission decides."""
        return sorted([*self.retry_as, *self.in_flight])


class Admission(RedisBacked):
    def admit(
        self,
        records: Sequence[AcceptRecord],
        audit: Sequence[dict[str, str]],
        limits: Mapping[str, RateLimit | None] | None = None,
        then: Call | None = None,
    ) -> Admitted:
        """`limits`: each sender's rate limit (a sender missing or None: no limit).
        `then`: a call to run right behind the admission, in its round trip (one that
        checks for itself that the admission went through); its reply, or the error Redis
        gave it, is the result's `followed`.

        A batch whose messages take more than MAX_ADMIT_BYTES goes in parts (Redis runs a
        script alone: one of 140 MB held every other client for 2.3 s). Each part is all or
        nothing, and a refusal (or Redis failing) in a later part takes back the earlier
        parts, so the batch still is: their rate-limit tokens stay spent."""
        parts = _parts(records) if then is None else [list(range(len(records)))]
        if len(parts) == 1:
            return self._admit(records, audit, limits, then)
        duplicates: list[str | None] = [None] * len(records)
        retry_as: dict[int, str] = {}
        in_flight: dict[int, InFlight] = {}
        accepted: list[int] = []
        for part in parts:
            try:
                got = self._admit([records[i] for i in part], [audit[i] for i in part], limits)
            except Exception:
                self._take_back(records, accepted)
                raise
            if got.refusal is not None:
                self._take_back(records, accepted)
                refusal = _in_batch(got.refusal, part)
                return Admitted([None] * len(records), refusal=refusal, taken_back=accepted)
            for n, i in enumerate(part):
                duplicates[i] = got.duplicates[n]
                if got.duplicates[n] is None and n not in got.unsettled:
                    accepted.append(i)
            retry_as |= {part[n]: earlier for n, earlier in got.retry_as.items()}
            in_flight |= {part[n]: flight for n, flight in got.in_flight.items()}
        return Admitted(duplicates, retry_as, in_flight)

    def _take_back(self, records: Sequence[AcceptRecord], accepted: list[int]) -> None:
        """Best effort: with Redis gone too, bus.outbox publishes these later."""
        try:
            self.revoke([records[i] for i in accepted])
        except BusUnavailable as exc:
            logger.warning("%d admitted messages not taken back: %s", len(accepted), exc)

    def _admit(
        self,
        records: Sequence[AcceptRecord],
        audit: Sequence[dict[str, str]],
        limits: Mapping[str, RateLimit | None] | None,
        then: Call | None = None,
    ) -> Admitted:
        buckets = _buckets(records, limits or {})
        keys, args = self._command(records, audit, buckets)
        admit = (scripts.ADMIT, keys, args)
        if then is None:
            reply = self.scripts.call(*admit, action="record the send", confirm="note")
            return _parse(reply, len(records), list(buckets))
        reply, followed = self.scripts.many(
            [admit, then], action="record the send", confirm="note", partial=True
        )
        if isinstance(reply, Exception):
            with redis_errors("record the send"):  # judged as the runner judges its own
                raise reply
        return dataclasses.replace(_parse(reply, len(records), list(buckets)), followed=followed)

    def revoke(self, records: Iterable[AcceptRecord], undeliver: Collection[str] = ()) -> set[str]:
        """Undoes `admit` for messages the broker did not take; for the ids in `undeliver`
        (messages this call delivered itself) their delivery too, while they are still this
        call's (scripts.REVOKE). Returns the ids it left because another call took them
        over since (they go out all the same)."""
        k = self.keys
        calls = []
        records = list(records)
        if not records:
            return set()
        for rec in records:
            keys = [
                k.dedup(rec.sender, rec.dedup_key),
                k.status(rec.id),
                k.history(rec.sender, sent=True),
                k.dedup_id(rec.id),
                k.history_bytes(rec.sender, sent=True),
                k.unconfirmed,
                k.unconfirmed_wires,
                *(key for a in rec.recipients for key in (k.inbox(a).pending, k.inbox(a).senders)),
            ]
            taken_back = rec.id in undeliver
            if taken_back:
                keys += delivery_calls.undelivery_keys(k, rec.id, rec.recipients)
            args = [rec.id, rec.wire, rec.sender, rec.token, "1" if rec.takeover else "0"]
            args += ["1" if taken_back else "0", str(self.retention.dedup_window), *rec.recipients]
            calls.append((scripts.REVOKE, keys, args))
        undone = self.scripts.many(calls, action="undo a refused send")
        return {rec.id for rec, done in zip(records, undone, strict=True) if not int(done)}

    def commit(self, records: Sequence[AcceptRecord]) -> None:
        """After the broker's confirm: the messages are no longer unconfirmed (bus.outbox),
        and their dedup records are final (see `AcceptRecord`)."""
        self.confirm([(rec.id, rec.sender, rec.dedup_key, None) for rec in records])

    def confirm(self, messages: Sequence[tuple[str, str, str, int | None]]) -> None:
        """`commit` of (id, sender, dedup key, the lease end seen or None for any): a message
        admitted again since that lease end is left as it is (scripts.COMMIT)."""
        k, r = self.keys, self.retention
        keys: list[str] = [k.unconfirmed, k.unconfirmed_wires]
        args: list[Any] = [r.dedup_window, r.history_limit, r.history_max_bytes]
        for message_id, sender, dedup_key, seen in messages:
            keys += [k.dedup(sender, dedup_key), k.dedup_id(message_id)]
            keys += [k.history(sender, sent=True), k.history_bytes(sender, sent=True)]
            args += [message_id, sender, "" if seen is None else seen]
        if messages:
            self.scripts.call(scripts.COMMIT, keys, args, action="record the send")

    def _command(
        self,
        records: Sequence[AcceptRecord],
        audit: Sequence[dict[str, str]],
        buckets: dict[str, tuple[int, RateLimit]],
    ) -> tuple[list[str], list[Any]]:
        k, r = self.keys, self.retention
        keys = [k.agents, k.rate_bucket("sent", int(self.clock.now())), k.audit, k.ghosts]
        keys += [k.unconfirmed, k.unconfirmed_wires, k.inbox_seq]
        limits = [[limit.rate, limit.burst] for _, limit in buckets.values()]
        args: list[Any] = [
            r.dedup_window,
            r.status_retention,
            r.history_limit,
            AUDIT_MAXLEN,
            orjson.dumps(limits).decode(),
            r.inbox_share,
            r.history_max_bytes,
            r.inbox_max,
            r.max_unseen_recipients,
            len(records),
            r.send_lease_ms,
        ]
        for rec, entry in zip(records, audit, strict=True):
            keys += [
                k.dedup(rec.sender, rec.dedup_key),
                k.dedup_id(rec.id),
                k.status(rec.id),
                k.history(rec.sender, sent=True),
                k.history_bytes(rec.sender, sent=True),
                k.unseen(rec.sender),
            ]
            for agent in rec.recipients:
                inbox = k.inbox(agent)
                keys += [inbox.body, inbox.pending, inbox.senders]
            flat = [part for pair in entry.items() for part in pair]
            args += [rec.id, rec.queue, rec.sender, rec.wire, rec.ts_ms, rec.expires_ms or ""]
            args += [orjson.dumps(flat).decode(), "1" if rec.may_repeat else "0"]
            bucket = buckets[rec.sender][0] if rec.sender in buckets else 0
            args += [rec.to, "1" if rec.declared else "0", rec.token, bucket]
            args += [len(rec.recipients), *rec.recipients]
        keys += [limit.key for _, limit in buckets.values()]
        return keys, args


def _parts(records: Sequence[AcceptRecord]) -> list[list[int]]:
    """The batch's indexes in parts of at most MAX_ADMIT_BYTES of wires (a message larger
    than that goes alone). Messages sharing a dedup key or an id stay in one part: ADMIT
    tells a repeat within its call from an earlier send still in flight."""
    group_of: dict[str, int] = {}
    groups: list[list[int]] = []
    for i, rec in enumerate(records):
        names = (f"{rec.sender} {rec.dedup_key}", f"id {rec.id}")
        known = [group_of[name] for name in names if name in group_of]
        if known:
            g = known[0]
            if len(known) == 2 and known[1] != g:  # one message joins two groups: merge
                groups[g] += groups[known[1]]
                groups[known[1]] = []
                group_of |= {n: g for n, v in group_of.items() if v == known[1]}
        else:
            g = len(groups)
            groups.append([])
        groups[g].append(i)
        group_of |= dict.fromkeys(names, g)
    parts: list[list[int]] = []
    size = 0
    for group in groups:
        if not group:
            continue
        bytes_ = sum(len(records[i].wire) for i in group)
        if not parts or size + bytes_ > MAX_ADMIT_BYTES:
            parts.append([])
            size = 0
        parts[-1] += group
        size += bytes_
    return [sorted(part) for part in parts]


def _in_batch(refusal: tuple[str, ...], part: list[int]) -> tuple[str, ...]:
    """A part's refusal, naming its message by its place in the whole batch (1-based)."""
    if refusal[0] in ("conflict", "unknown_agent", "inbox_full", "share_full"):
        return (refusal[0], str(part[int(refusal[1]) - 1] + 1), *refusal[2:])
    return refusal


def _buckets(
    records: Sequence[AcceptRecord], limits: Mapping[str, RateLimit | None]
) -> dict[str, tuple[int, RateLimit]]:
    """Each limited sender of `records` -> its bucket's number in the script (1-based) and
    its limit."""
    buckets: dict[str, tuple[int, RateLimit]] = {}
    for rec in records:
        limit = limits.get(rec.sender)
        if limit is not None and rec.sender not in buckets:
            buckets[rec.sender] = (len(buckets) + 1, limit)
    return buckets


def _parse(reply: list[Any], count: int, senders: list[str]) -> Admitted:
    if reply[0] != "ok":
        refusal = [str(part) for part in reply]
        if refusal[0] in ("rate_limited", "too_costly"):  # its bucket -> whose it is
            refusal[2] = senders[int(refusal[2]) - 1]
        return Admitted([None] * count, refusal=tuple(refusal))
    duplicates: list[str | None] = []
    retry_as: dict[int, str] = {}
    in_flight: dict[int, InFlight] = {}
    for i, outcome in enumerate(reply[1:]):
        if outcome.startswith("retry-as:"):
            retry_as[i] = outcome.removeprefix("retry-as:")
            outcome = ""
        elif outcome.startswith("in-flight:"):
            left_ms, _, earlier = outcome.removeprefix("in-flight:").partition(":")
            in_flight[i] = InFlight(earlier, int(left_ms) / 1000)
            outcome = ""
        duplicates.append(outcome or None)
    return Admitted(duplicates, retry_as, in_flight)
