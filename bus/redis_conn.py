"""Lazy, pooled Redis connections, and the one place Redis errors become bus errors.

Lua scripts run through bus.scripts.ScriptRunner, which reports through `redis_errors` too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

import redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

from bus.breaker import BREAKERS
from bus.errors import BusError, BusUnavailable, ConfigError, NotReplicated

logger = logging.getLogger(__name__)

CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
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
    if isinstance(exc, CONNECTION_ERRORS):
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
    client: redis.Redis = _client(
        url, redis.Redis, Sentinel, socket_timeout=socket_timeout, sentinel_timeout=socket_timeout
    )
    return client


def connect_async(
    url: str, *, socket_timeout: float | None = None, client_name: str | None = None
) -> AsyncRedis:
    """`connect` for asyncio code (the MCP server's push listener), same URL forms;
    `client_name`: what its connections are called in Redis's CLIENT LIST."""
    # Its reads may wait without end (a listener); asking a Sentinel never does.
    client: AsyncRedis = _client(
        url,
        AsyncRedis,
        AsyncSentinel,
        socket_timeout=socket_timeout,
        sentinel_timeout=2.0,
        client_name=client_name,
    )
    return client


def _client(
    url: str,
    client_class: type[redis.Redis] | type[AsyncRedis],
    sentinel_class: type[Sentinel] | type[AsyncSentinel],
    *,
    socket_timeout: float | None,
    sentinel_timeout: float,
    client_name: str | None = None,
) -> Any:
    """A client of `client_class` for `url`, or through `sentinel_class` for a Sentinel
    URL (each family of redis-py, sync or asyncio, brings its own pair)."""
    options = _options(socket_timeout)
    if client_name:
        options["client_name"] = client_name
    if url.startswith(SENTINEL_SCHEME):
        target = SentinelTarget.parse(url)
        sentinel = sentinel_class(
            target.hosts,
            min_other_sentinels=target.min_other_sentinels,
            sentinel_kwargs=target.sentinel_kwargs(sentinel_timeout),
        )
        return sentinel.master_for(
            target.service, db=target.db, password=target.password, **options
        )
    return client_class.from_url(url, **options)


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


def may_have_run(exc: BaseException) -> bool:
    """Whether Redis may have run what failed with `exc`: yes unless it failed to connect
    (then nothing reached Redis), or Redis itself answered with the error. Known for a
    BusUnavailable through its cause (the script runner marks what it tried twice)."""
    cause = exc.__cause__ if isinstance(exc, BusError) else exc
    if cause is None:
        return False  # the breaker was open: nothing was tried
    marked = getattr(cause, "may_have_run", None)
    if marked is not None:
        return bool(marked)
    if isinstance(cause, redis.BusyLoadingError) or not isinstance(cause, CONNECTION_ERRORS):
        return False
    return "connecting to" not in str(cause)


@contextmanager
def redis_errors(action: str) -> Iterator[None]:
    """Turns connection-level Redis failures into BusUnavailable naming the action, and
    fails at once while the Redis circuit breaker is open."""
    breaker = BREAKERS["redis"]
    with breaker.passage(action):
        try:
            yield
        except NotReplicated:
            breaker.success()  # Redis answered: only its replicas lag behind
            raise
        except BusError:
            raise  # a nested call already judged it
        except redis.RedisError as exc:
            if not is_transient(exc):
                breaker.success()  # Redis answered; the error is something else
                raise
            breaker.failure()
            if isinstance(exc, CONNECTION_ERRORS):
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
