"""Admission: the send side's one Redis call, and its undo.

One ADMIT script per send or batch checks the sender's rate limit, refuses duplicates (the
same dedup key or id within the dedup window), records each message as `queued` with its
sender's history, and appends the audit entries: all of it or none of it.

When nothing can refuse the messages (no rate limit applies, and every id was made by the
bus with no dedup key, so none can be a duplicate) the call goes out *beside* the publish:
written to Redis before the message is published, its reply read once the broker has
confirmed. That takes a Redis round trip off every such send. ADMIT never moves a status
back, so a worker that delivers before the reply is read does no harm.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
import orjson
import redis

from bus import scripts
from bus.keys import Keys
from bus.redis_conn import execute_scripted, queue_script, redis_errors
from bus.replication import Replication
from bus.store import AUDIT_MAXLEN, Retention

logger = logging.getLogger(__name__)


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


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket charge: `cost` tokens from `key`, refilled at `rate`/s up to `burst`."""

    key: str
    rate: float
    burst: int
    cost: int


@dataclass(frozen=True, slots=True)
class Admitted:
    """Per message, None when accepted or the id it duplicates; the messages to send again
    under an earlier sender's id (index -> id, see scripts.ADMIT); or, when the rate limit
    refused the whole call (nothing written), how long to wait."""

    duplicates: list[str | None]
    retry_as: dict[int, str] = field(default_factory=dict)
    retry_after_ms: int | None = None


class Admission:
    def __init__(
        self,
        client: Any,
        keys: Keys,
        retention: Retention,
        replication: Replication | None = None,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.retention = retention
        self.replication = replication or Replication()  # WAIT after ADMIT (bus.replication)
        self._admit = client.register_script(scripts.ADMIT)
        self._revoke = client.register_script(scripts.REVOKE)
        self._commit = client.register_script(scripts.COMMIT)

    def admit(
        self,
        records: Sequence[AcceptRecord],
        audit: Sequence[dict[str, str]],
        limit: RateLimit | None = None,
    ) -> Admitted:
        keys, args = self._command(records, audit, limit)
        with redis_errors("record the send"):
            reply = self.replication.script(self.redis, self._admit, keys, args, "record the send")
            return _parse(reply, len(records))

    def admit_beside(
        self, records: Sequence[AcceptRecord], audit: Sequence[dict[str, str]]
    ) -> PendingAdmission:
        """Writes the call now; `PendingAdmission.result()` reads its reply (after the
        publish). Raises BusUnavailable at once when Redis cannot take it."""
        keys, args = self._command(records, audit, None)
        return PendingAdmission(self, keys, args)

    def revoke(self, records: Iterable[AcceptRecord]) -> None:
        """Undoes `admit` for messages the broker did not take."""
        k = self.keys
        with redis_errors("undo a refused send"):
            pipe = self.redis.pipeline(transaction=False)
            for rec in records:
                queue_script(
                    pipe,
                    self._revoke,
                    [k.dedup(rec.dedup_key), k.status(rec.id), k.history(rec.sender)]
                    + [k.dedup_id(rec.id)],
                    [rec.id, rec.wire],
                )
            execute_scripted(pipe, self._revoke)

    def commit(self, records: Sequence[AcceptRecord]) -> None:
        """Makes the dedup records of published messages final (see `AcceptRecord`)."""
        keys: list[str] = []
        for rec in records:
            keys += [self.keys.dedup(rec.dedup_key), self.keys.dedup_id(rec.id)]
        if keys:
            with redis_errors("record the send"):
                self._commit(
                    keys=keys, args=[self.retention.dedup_window, *(rec.id for rec in records)]
                )

    def _command(
        self,
        records: Sequence[AcceptRecord],
        audit: Sequence[dict[str, str]],
        limit: RateLimit | None,
    ) -> tuple[list[str], list[Any]]:
        k = self.keys
        keys = [
            k.agents,
            k.rate_bucket("sent", int(time.time())),
            k.audit,
            limit.key if limit else k.rate(records[0].sender),
        ]
        args: list[Any] = [
            self.retention.dedup_window,
            self.retention.status_retention,
            self.retention.history_limit,
            AUDIT_MAXLEN,
            limit.rate if limit else "",
            limit.burst if limit else 0,
            limit.cost if limit else 0,
        ]
        for rec, entry in zip(records, audit, strict=True):
            keys += [k.dedup(rec.dedup_key), k.dedup_id(rec.id), k.status(rec.id)]
            keys.append(k.history(rec.sender))
            flat = [part for pair in entry.items() for part in pair]
            args += [rec.id, rec.queue, rec.sender, rec.wire, rec.ts_ms, rec.expires_ms or ""]
            args += [orjson.dumps(flat).decode(), "1" if rec.may_repeat else "0"]
        return keys, args


class PendingAdmission:
    """An ADMIT call written on a connection of its own, its reply not read yet."""

    def __init__(self, admission: Admission, keys: list[str], args: list[Any]) -> None:
        self._admission = admission
        self._keys, self._args = keys, args
        self._pool = admission.redis.connection_pool
        with redis_errors("record the send"):
            conn = self._pool.get_connection()
            try:
                sha = admission._admit.sha
                conn.send_packed_command(
                    [
                        hiredis.pack_command(("EVALSHA", sha, len(keys), *keys, *args)),
                        admission.replication.packed(),  # WAIT behind it, when asked
                    ]
                )
            except BaseException:
                conn.disconnect()
                self._pool.release(conn)
                raise
        self._conn: Any = conn

    def result(self) -> Admitted:
        """Reads the reply (once); raises BusUnavailable when Redis went away meanwhile."""
        conn, self._conn = self._conn, None
        if conn is None:
            raise RuntimeError("the admission reply was already read")
        with redis_errors("record the send"):
            replication = self._admission.replication
            try:
                try:
                    reply = conn.read_response()
                except redis.exceptions.NoScriptError:
                    reply = None  # Redis lost its scripts (restart): run it the ordinary way
                acknowledged = conn.read_response() if replication.on else 0
            except BaseException:
                conn.disconnect()  # the reply may still be on its way: drop the socket
                raise
            finally:
                self._pool.release(conn)
            if reply is None:
                reply = replication.script(
                    self._admission.redis, self._admission._admit, self._keys, self._args,
                    "record the send",
                )  # fmt: skip
            else:
                replication.note(acknowledged, "record the send")
            return _parse(reply, (len(self._keys) - 4) // 4)


def _parse(reply: list[Any], count: int) -> Admitted:
    if reply[0] == "rate_limited":
        return Admitted([None] * count, retry_after_ms=int(reply[1]))
    duplicates: list[str | None] = []
    retry_as: dict[int, str] = {}
    for i, outcome in enumerate(reply[1:]):
        if outcome.startswith("retry-as:"):
            retry_as[i] = outcome.removeprefix("retry-as:")
            outcome = ""
        duplicates.append(outcome or None)
    return Admitted(duplicates, retry_as)
