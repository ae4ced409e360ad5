"""How the script runner makes a round trip: the contract, and the redis-py backend.

A backend writes packed commands on one connection and reads as many replies, an error
reply in its place (NOSCRIPT as NoScriptError). It never leaves a connection that may still
carry a reply for someone else: on any failure that connection is dropped before the error
(redis-py's ConnectionError or TimeoutError) is raised. The runner (bus.scripts.runner)
does the rest: packing, NOSCRIPT, the retry, WAIT, errors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import redis
from redis.exceptions import ReadOnlyError

logger = logging.getLogger(__name__)


class Backend(Protocol):
    def send(self, packed: bytes, count: int) -> list[Any]:
        """Writes `packed` (`count` commands) and returns their `count` replies in order."""
        ...


class PoolBackend:
    """Round trips on redis-py's own pool, connections and reply parser."""

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool

    def send(self, packed: bytes, count: int) -> list[Any]:
        with lent(self._pool.get_connection(), self._pool.release) as conn:
            conn.send_packed_command([packed], check_health=False)
            replies: list[Any] = []
            for _ in range(count):
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as exc:  # a reply, not a failure of the socket
                    replies.append(exc)
            raise_if_demoted(replies)
            return replies


@contextmanager
def lent(conn: Any, give_back: Callable[[Any], None]) -> Iterator[Any]:
    """`conn` for one round trip, given back after it; dropped first if anything failed (a
    reply may still be on its way: never reuse the socket as it is)."""
    try:
        yield conn
    except BaseException:
        conn.disconnect()
        raise
    finally:
        give_back(conn)


def raise_if_demoted(replies: list[Any]) -> None:
    """READONLY means the server was a primary and is now a replica (a failover demoted it,
    and it came back). Raised as a ConnectionError, so the backend drops the socket and the
    next connect asks Sentinel for the primary again."""
    for reply in replies:
        if isinstance(reply, ReadOnlyError) or (
            isinstance(reply, redis.ResponseError) and str(reply).startswith("READONLY")
        ):
            raise redis.ConnectionError(f"the Redis primary is now a replica (failover): {reply}")
