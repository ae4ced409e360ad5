"""Lazy, pooled Redis connections, and the one place Redis errors become bus errors."""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

import hiredis
import redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.exceptions import NoScriptError
from redis.sentinel import Sentinel

from bus.breaker import BREAKERS
from bus.errors import BusError, BusUnavailable, ConfigError
from bus.replication import Replication

logger = logging.getLogger(__name__)

_CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
# Error replies of a Redis that will heal: a replica after a failover (READONLY), a primary
# whose replicas lag (NOREPLICAS) or whose link to its master is down (MASTERDOWN), one out of
# memory (OOM) or unable to persist (MISCONF), loading its data (LOADING), a cluster that is
# resharding or down (TRYAGAIN, CLUSTERDOWN), a long script (BUSY). The bus retries these.
TRANSIENT_ERROR_CODES = frozenset(
    {
        "READONLY",
        "NOREPLICAS",
        "MASTERDOWN",
        "OOM",
        "MISCONF",
        "LOADING",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "BUSY",
    }
)


def is_transient(exc: BaseException) -> bool:
    """Is this Redis failure one that heals by itself (retry later)?"""
    if isinstance(exc, _CONNECTION_ERRORS):
        return True
    if not isinstance(exc, redis.ResponseError):
        return False
    # redis-py strips the codes it knows into `status_code`; hiredis replies keep them.
    code = getattr(exc, "status_code", None) or str(exc).split(" ", 1)[0]
    return code in TRANSIENT_ERROR_CODES


def connect(url: str, *, socket_timeout: float = 5.0) -> redis.Redis:
    """A client whose pool connects on first command (nothing connects at import or here).

    ``redis+sentinel://host:26379,host2:26379/mymaster/0`` asks Sentinel for the primary on
    every new connection; after a failover, connections to the old primary fail (or hear
    READONLY once it is back as a replica) and are replaced by ones to the new primary.
    """
    options = _options(socket_timeout)
    if url.startswith(SENTINEL_SCHEME):
        target = SentinelTarget.parse(url)
        sentinel = Sentinel(
            target.hosts,
            min_other_sentinels=target.min_other_sentinels,
            sentinel_kwargs=target.sentinel_kwargs(socket_timeout),
        )
        return sentinel.master_for(
            target.service, db=target.db, password=target.password, **options
        )
    return redis.Redis.from_url(url, **options)


def connect_async(url: str, *, socket_timeout: float | None = None) -> AsyncRedis:
    """`connect` for asyncio code (the MCP server's push listener), same URL forms."""
    options = _options(socket_timeout)
    if url.startswith(SENTINEL_SCHEME):
        target = SentinelTarget.parse(url)
        sentinel = AsyncSentinel(
            target.hosts,
            min_other_sentinels=target.min_other_sentinels,
            sentinel_kwargs=target.sentinel_kwargs(2.0),
        )
        return sentinel.master_for(
            target.service, db=target.db, password=target.password, **options
        )
    return AsyncRedis.from_url(url, **options)


def _options(socket_timeout: float | None) -> dict[str, Any]:
    return {
        "decode_responses": True,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 2.0,
        "health_check_interval": 30,
    }


SENTINEL_SCHEME = "redis+sentinel://"


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """``redis+sentinel://[:password@]host:port,host:port/service/db``, parsed."""

    hosts: list[tuple[str, int]]
    service: str
    db: int
    password: str | None

    @classmethod
    def parse(cls, url: str) -> SentinelTarget:
        parsed = urlparse(url)
        hosts = []
        for part in parsed.netloc.rsplit("@", 1)[-1].split(","):
            host, _, port = part.partition(":")
            hosts.append((host or "127.0.0.1", int(port or 26379)))
        path = [p for p in parsed.path.split("/") if p]
        if not path:
            raise ConfigError(
                f"MESSAGE_BUS_REDIS_URL {url!r} names no Sentinel service: "
                "redis+sentinel://host:26379,host2:26379/mymaster/0"
            )
        password = parsed.password or parse_qs(parsed.query).get("password", [None])[0]
        return cls(hosts, path[0], int(path[1]) if len(path) > 1 else 0, password)

    @property
    def min_other_sentinels(self) -> int:
        # A Sentinel that sees fewer peers than a majority may be the cut-off one, with a
        # stale primary: its answer is not taken.
        return len(self.hosts) // 2

    def sentinel_kwargs(self, socket_timeout: float) -> dict[str, Any]:
        return {"socket_timeout": socket_timeout, "socket_connect_timeout": 1.0}


@contextmanager
def redis_errors(action: str) -> Iterator[None]:
    """Turns connection-level Redis failures into BusUnavailable naming the action, and
    fails at once while the Redis circuit breaker is open."""
    breaker = BREAKERS["redis"]
    if not breaker.allow():
        raise BusUnavailable(
            f"bus unavailable: Redis cannot be reached (circuit open after repeated failures; "
            f"next try in {breaker.retry_in():.1f}s) while trying to {action}",
            component="redis",
        )
    try:
        yield
    except BusError:
        raise  # a nested call already judged it
    except redis.RedisError as exc:
        if not is_transient(exc):
            breaker.success()  # Redis answered; the error is something else
            raise
        breaker.failure()
        if isinstance(exc, _CONNECTION_ERRORS):
            problem = f"Redis cannot be reached while trying to {action} ({exc})"
        else:
            problem = f"Redis refused to {action} for now ({_describe(exc)})"
        raise BusUnavailable(f"bus unavailable: {problem}", component="redis") from exc
    except Exception:
        breaker.success()
        raise
    else:
        breaker.success()


def _describe(exc: BaseException) -> str:
    code = getattr(exc, "status_code", None)
    text = str(exc) or type(exc).__name__
    return f"{code} {text}" if code and not text.startswith(code) else text


def queue_script(pipe: Any, script: Any, keys: Sequence[str], args: Sequence[Any]) -> None:
    """Queues a script call on a pipeline as a bare EVALSHA. (A redis-py Script object on a
    pipeline makes it send SCRIPT EXISTS first: one more round trip on every execute.) Run
    the pipeline with `execute_scripted`, which recovers when Redis has lost the script."""
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)


def execute_scripted(pipe: Any, *scripts: Any) -> list[Any]:
    """``pipe.execute()`` for pipelines filled by `queue_script` with `scripts`: the calls
    that found no script (Redis restarted or flushed) run again once, after loading them;
    any other error is raised as execute() raises it."""
    stack = list(pipe.command_stack)
    results: list[Any] = pipe.execute(raise_on_error=False)
    missing = [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
    if missing and scripts:
        client = scripts[0].registered_client
        for script in scripts:
            client.script_load(script.script)
        again = client.pipeline(transaction=False)
        for i in missing:
            args, options = stack[i]
            again.execute_command(*args, **options)
        for i, result in zip(missing, again.execute(raise_on_error=False), strict=True):
            results[i] = result
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


class DirectScript:
    """A Lua script run on connections of its own, outside redis-py's pool.

    redis-py's general path (pool checkout and release, retry wrapper, observability hooks)
    costs ~100 µs of CPU a call on top of the round trip, as much as the delivery itself;
    the worker's per-message script takes this shorter path: redis-py's Connection opens
    the socket (AUTH, SELECT, TLS, Sentinel stay its job), then the call is written and its
    replies parsed by a hiredis Reader kept with the socket. Connections wait in a free
    list: a caller (pool thread, greenlet) takes one for one call and puts it back, so there
    are never more than callers at once. Errors are redis-py's own, so `redis_errors` maps
    them as usual. A broken connection is reconnected and the call tried once more, as
    redis-py's default retry does: use it only for idempotent scripts.
    """

    def __init__(
        self, client: redis.Redis, script: str, replication: Replication | None = None
    ) -> None:
        pool = client.connection_pool
        self._connection_class = pool.connection_class
        self._connection_kwargs = pool.connection_kwargs
        self._script = client.register_script(script)
        self._free: list[Any] = []
        # With replicas required, each round trip ends with a WAIT (see bus.replication).
        self._replication = replication or Replication()
        self._wait = self._replication.packed()

    def __call__(
        self, keys: Sequence[str], args: Sequence[Any], action: str = "run a script"
    ) -> Any:
        [reply] = self.many([(keys, args)], action)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def many(
        self, calls: Sequence[tuple[Sequence[str], Sequence[Any]]], action: str = "run a script"
    ) -> list[Any]:
        """Runs the calls in one round trip. Replies in order; a call that Redis refused
        gets its ResponseError in its place (the others still ran). With replicas required,
        raises NotReplicated when fewer confirmed the writes (the calls did run)."""
        try:
            conn = self._free.pop()  # atomic: no lock needed between pool threads
        except IndexError:
            conn = self._connection_class(**self._connection_kwargs)
        try:
            try:
                replies = self._run(conn, calls)
            except _CONNECTION_ERRORS:
                replies = self._run(conn, calls)  # on a fresh socket (it reconnects)
            missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
            if missing:
                # A restarted (or failed-over) Redis has lost its script cache.
                [sha] = self._send(conn, _pack("SCRIPT", "LOAD", self._script.script), 1)
                if isinstance(sha, Exception):
                    raise sha
                self._script.sha = sha
                again = self._run(conn, [calls[i] for i in missing])
                if self._wait:
                    replies[-1] = again.pop()  # the later WAIT covers both round trips
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
            if self._wait:
                self._replication.require(replies.pop(), action)
            return replies
        finally:
            self._free.append(conn)

    def _run(self, conn: Any, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[Any]:
        """The calls' replies, then WAIT's when replicas are required."""
        sha = self._script.sha
        packed = b"".join(_pack("EVALSHA", sha, len(keys), *keys, *args) for keys, args in calls)
        replies = self._send(conn, packed + self._wait, len(calls) + bool(self._wait))
        if any(_is_readonly(r) for r in replies):
            # The server was a primary and is now a replica (a failover demoted it, and it
            # came back): drop the socket, so the next connect asks Sentinel again.
            conn.disconnect()
            raise redis.ConnectionError("the Redis primary is now a replica (failover)")
        return replies

    @staticmethod
    def _send(conn: Any, packed: bytes, count: int) -> list[Any]:
        """Writes `packed` on `conn` and reads its `count` replies."""
        try:
            # connect() first: sending on an unconnected socket would connect it without
            # the hooks of its class (a Sentinel connection asks Sentinel for the master).
            conn.connect()
            return _SocketReplies.of(conn).call(packed, count)
        except BaseException:
            conn.disconnect()  # a reply may be pending: never reuse this socket as it is
            raise


class _SocketReplies:
    """Writes packed commands on a connected redis-py Connection's socket and reads their
    replies with a hiredis Reader of its own: ~25 µs of CPU less a call than the
    Connection's send and read path. Raises redis-py's exceptions, so callers map errors
    as for any Redis call.

    A plain TCP or Unix socket is switched to blocking mode with the timeout kept by the
    kernel (SO_SNDTIMEO / SO_RCVTIMEO): Python polls before every send and receive on a
    socket with a timeout, and each of those system calls releases and takes back the GIL,
    which in a threads-pool worker is a futex hand-off every time (~5 fewer a message)."""

    __slots__ = ("sock", "reader")

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        timeout = sock.gettimeout()
        if type(sock) is socket.socket and timeout:  # not TLS: its reads need Python's timeout
            seconds, fraction = divmod(timeout, 1.0)
            interval = struct.pack("ll", int(seconds), int(fraction * 1_000_000))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
            sock.settimeout(None)
        self.reader = hiredis.Reader(
            protocolError=redis.exceptions.InvalidResponse,
            replyError=redis.exceptions.ResponseError,
            encoding="utf-8",
        )

    @classmethod
    def of(cls, conn: Any) -> _SocketReplies:
        """The reader for `conn`'s current socket (a new one after a reconnect)."""
        replies: _SocketReplies | None = getattr(conn, "_bus_replies", None)
        if replies is None or replies.sock is not conn._sock:
            replies = cls(conn._sock)
            conn._bus_replies = replies
        return replies

    def call(self, packed: bytes, count: int) -> list[Any]:
        """Sends `packed` and returns its `count` replies; an error reply is returned in
        its place (NOSCRIPT as NoScriptError), not raised."""
        try:
            self.sock.sendall(packed)
            replies: list[Any] = []
            while len(replies) < count:
                reply = self.reader.gets()
                if reply is False:
                    data = self.sock.recv(65536)
                    if not data:
                        raise redis.ConnectionError("Redis closed the connection")
                    self.reader.feed(data)
                elif _is_noscript(reply):
                    replies.append(NoScriptError(str(reply)))
                else:
                    replies.append(reply)
            return replies
        except (TimeoutError, BlockingIOError) as exc:  # Python's or the kernel's timeout
            raise redis.TimeoutError(f"Timeout talking to Redis: {exc}") from exc
        except OSError as exc:
            raise redis.ConnectionError(f"Error talking to Redis: {exc}") from exc


def _is_readonly(reply: Any) -> bool:
    return isinstance(reply, redis.exceptions.ResponseError) and "READONLY" in str(reply)[:40]


def _is_noscript(reply: Any) -> bool:
    return isinstance(reply, redis.exceptions.ResponseError) and str(reply).startswith("NOSCRIPT")


def _pack(*command: Any) -> bytes:
    """One command in Redis's wire format; hiredis packs str and numbers in one C call
    (redis-py encodes argument by argument first)."""
    return hiredis.pack_command(command)
